//! Runnable examples of embedding rbee; see the `[[example]]` targets and README.
