//! POSIX shell quoting, for the few places a command line must be one string (SSH exec).

/// Quotes one word for a POSIX shell: `'...'` with embedded `'` as `'\''`. Plain words
/// made only of safe characters are left bare for readability.
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if safe { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// Joins argv into one shell line, each word quoted.
pub fn shell_line(argv: &[String]) -> String {
    argv.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any string (argv cannot hold NUL) reaches the command exactly as given.
        #[test]
        fn any_string_is_quoted_safely(word in "[^\\x00]{0,40}") {
            let line = shell_line(&["printf".to_owned(), "%s".to_owned(), word.clone()]);
            let out = std::process::Command::new("sh").arg("-c").arg(&line).output().unwrap();
            proptest::prop_assert_eq!(String::from_utf8_lossy(&out.stdout), word);
        }
    }

    #[test]
    fn quoting_round_trips_through_sh() {
        let words = ["plain", "", "a b", "it's", "$(rm -rf /)", "`x`", "a\nb", "*", "\\"];
        let argv: Vec<String> =
            ["printf", "%s\\0"].iter().map(|s| s.to_string()).chain(words.iter().map(|s| s.to_string())).collect();
        let out = std::process::Command::new("sh").arg("-c").arg(shell_line(&argv)).output().unwrap();
        let got: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().split('\0').collect();
        assert_eq!(&got[..words.len()], &words);
    }
}
