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

/// The library's errors name the setting that would help (`ServerConfig::allow_uid`...),
/// which a user of the command line cannot call: each such setting, and the flag of
/// `ringbell serve` that sets it.
const SETTINGS_AS_FLAGS: [(&str, &str); 3] = [
    ("ServerConfig::max_message_size", "--max-message-size BYTES"),
    ("ServerConfig::max_connections", "--max-connections N"),
    ("ServerConfig::allow_uid", "--allow-uid UID"),
];

impl From<ringbell::Error> for CliError {
    /// The library's message, and where it names a server setting, the flag of `ringbell
    /// serve` that sets it.
    fn from(error: ringbell::Error) -> CliError {
        let mut message = error.to_string();
        for (setting, flag) in SETTINGS_AS_FLAGS {
            if message.contains(setting) {
                message.push_str(&format!(
                    "; from the command line, a server started with `ringbell serve PATH {flag}`"
                ));
            }
        }
        CliError::new(message)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_settings_come_with_the_serve_flag_that_sets_them() {
        let busy = ringbell::Error::ServerBusy {
            detail: "the server is at its connection limit (ServerConfig::max_connections)".into(),
        };
        let message = CliError::from(busy).to_string();
        assert!(
            message.contains("ServerConfig::max_connections")
                && message.ends_with("`ringbell serve PATH --max-connections N`"),
            "{message}"
        );
        let timeout = CliError::from(ringbell::Error::Timeout).to_string();
        assert!(!timeout.contains("ringbell serve"), "{timeout}");
    }
}
