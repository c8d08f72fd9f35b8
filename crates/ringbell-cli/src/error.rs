//! The command-line tool's error: a message for a human, built up with context as it
//! travels out to `main`, which prints it and exits non-zero.

use std::fmt;

/// What went wrong, as one line for stderr.
#[derive(Debug)]
pub struct CliError {
    message: String,
}

impl CliError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl From<ringbell::Error> for CliError {
    fn from(error: ringbell::Error) -> CliError {
        CliError::new(error.to_string())
    }
}

/// Adds what we were doing to an error: `connecting to /tmp/s.sock: <cause>`.
pub trait Context<T> {
    /// Wraps the error, if any, as `"{what}: {error}"`.
    fn context(self, what: impl fmt::Display) -> Result<T, CliError>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T, CliError> {
        self.map_err(|error| CliError::new(format!("{what}: {error}")))
    }
}
