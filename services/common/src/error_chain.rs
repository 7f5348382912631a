//! An error with its whole `source()` chain on one line, for logs and for what a command prints.

use std::error::Error;
use std::fmt;

/// Displays an error and its causes joined by `: `. A cause whose text the message already ends
/// with is not repeated (many errors include their source in their own message).
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let part = cause.to_string();
            if !text.ends_with(&part) {
                text.push_str(": ");
                text.push_str(&part);
            }
            source = cause.source();
        }
        f.write_str(&text)
    }
}

/// [`ErrorChain`] as a string.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    ErrorChain(error).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("reading the file: no such file")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn causes_follow_the_message_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(error_chain(&Outer(io())), "cannot start: no such file");
        assert_eq!(
            error_chain(&Repeats(io())),
            "reading the file: no such file"
        );
    }
}
