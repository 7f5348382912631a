//! How the converge half talks to a host: run a command (optionally with stdin, optionally as
//! root) and move files, behind a trait so plan and apply logic are tested without a network.

use std::io::Write;

/// What a finished remote command left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status; `-1` when the remote side sent none (e.g. killed by a signal).
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The last non-empty line of stderr (or stdout), the part of an error worth one line.
    pub fn error_line(&self) -> String {
        let stderr = String::from_utf8_lossy(&self.stderr);
        let stdout = String::from_utf8_lossy(&self.stdout);
        stderr
            .lines()
            .chain(stdout.lines())
            .map(str::trim)
            .rfind(|line| !line.is_empty())
            .unwrap_or("no output")
            .to_string()
    }
}

/// Why talking to a host failed; every message names the host so one line says it all.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{host}: cannot connect to {address}: {message}")]
    Connect {
        host: String,
        address: String,
        message: String,
    },
    #[error(
        "{host}: host key of {address} does not match the one recorded in {known_hosts} \
         (refusing to connect; remove the old entry if the machine was rebuilt)"
    )]
    HostKeyMismatch {
        host: String,
        address: String,
        known_hosts: String,
    },
    #[error("{host}: host key check failed: {message}")]
    HostKey { host: String, message: String },
    #[error("{host}: private key: {message}")]
    Key { host: String, message: String },
    #[error("{host}: key authentication as {user} refused ({key}): {message}")]
    Auth {
        host: String,
        user: String,
        key: String,
        message: String,
    },
    #[error("{host}: `sudo -n` fails for {user} (passwordless sudo needed): {message}")]
    Sudo {
        host: String,
        user: String,
        message: String,
    },
    #[error("{host}: ssh: {message}")]
    Session { host: String, message: String },
    #[error("{host}: `{command}` failed (exit {status}): {message}")]
    Command {
        host: String,
        command: String,
        status: i32,
        message: String,
    },
}

/// A connection to one host. Methods take `&self` so one session serves a whole run.
pub trait Transport: Send + Sync {
    /// The inventory name of the host, used in every message.
    fn host(&self) -> &str;

    /// Runs `command` with `sh` semantics; with `sudo`, as root (through `sudo -n` when the
    /// inventory says the user needs it). Secrets go in `stdin`, never in `command`.
    fn exec(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        sudo: bool,
    ) -> Result<ExecOutput, TransportError>;

    /// Runs `command` and copies its output to `out` as it comes (for `logs -f`).
    fn exec_streaming(
        &self,
        command: &str,
        sudo: bool,
        out: &mut dyn Write,
    ) -> Result<i32, TransportError> {
        let output = self.exec(command, None, sudo)?;
        // A closed local pipe (e.g. `| head`) is not an error of the host.
        let _ = out.write_all(&output.stdout);
        let _ = out.write_all(&output.stderr);
        Ok(output.status)
    }

    /// Like [`Transport::exec`] but a non-zero exit is an error carrying the last line of output.
    fn run(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        sudo: bool,
    ) -> Result<ExecOutput, TransportError> {
        let output = self.exec(command, stdin, sudo)?;
        if output.success() {
            Ok(output)
        } else {
            Err(TransportError::Command {
                host: self.host().to_string(),
                command: first_line(command),
                status: output.status,
                message: output.error_line(),
            })
        }
    }

    /// The file's bytes, or `None` when it does not exist (read as root).
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, TransportError> {
        let quoted = shell_quote(path);
        let output = self.exec(
            &format!("if [ -f {quoted} ]; then cat {quoted}; else exit 3; fi"),
            None,
            true,
        )?;
        match output.status {
            0 => Ok(Some(output.stdout)),
            3 => Ok(None),
            status => Err(TransportError::Command {
                host: self.host().to_string(),
                command: format!("cat {path}"),
                status,
                message: output.error_line(),
            }),
        }
    }

    /// Replaces `path` atomically: the bytes (on stdin, so secrets never reach a command line)
    /// land in a temporary file of the same directory, which gets its owner and mode before
    /// being renamed over `path`. `mktemp` creates it 0600, so a secret is never readable by others.
    fn write_file_atomic(
        &self,
        path: &str,
        bytes: &[u8],
        mode: u32,
        owner: &str,
        group: &str,
    ) -> Result<(), TransportError> {
        self.run(
            &write_file_script(path, mode, owner, group),
            Some(bytes),
            true,
        )
        .map(|_| ())
    }
}

/// The script behind [`Transport::write_file_atomic`], shared with the fake so tests see it.
pub fn write_file_script(path: &str, mode: u32, owner: &str, group: &str) -> String {
    replace_file_script(path, mode, owner, group, "")
}

/// Bytes on stdin into a temporary file of `path`'s directory, given its owner and mode, then
/// renamed over `path`, so the file is never half-written; `before_rename` runs just before.
pub fn replace_file_script(
    path: &str,
    mode: u32,
    owner: &str,
    group: &str,
    before_rename: &str,
) -> String {
    let dir = match path.rsplit_once('/') {
        Some(("", _)) | None => "/",
        Some((dir, _)) => dir,
    };
    let file_name = path.rsplit('/').next().unwrap_or(path);
    format!(
        "set -e; mkdir -p {dir}; tmp=$(mktemp {template}); trap 'rm -f \"$tmp\"' EXIT; \
         cat > \"$tmp\"; chown {owner}:{group} \"$tmp\"; chmod {mode:o} \"$tmp\"; \
         {before_rename}mv -f \"$tmp\" {path}; trap - EXIT",
        dir = shell_quote(dir),
        template = shell_quote(&format!("{dir}/.{file_name}.provision.XXXXXX")),
        owner = shell_quote(owner),
        group = shell_quote(group),
        path = shell_quote(path),
    )
}

/// `value` as one single-quoted shell word.
pub fn shell_quote(value: &str) -> String {
    if !value.is_empty()
        && value
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"/._-:=@,+%".contains(&byte))
    {
        return value.to_string();
    }
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn first_line(command: &str) -> String {
    let line = command.lines().next().unwrap_or_default();
    if line.len() > 120 {
        let cut = (0..=120)
            .rev()
            .find(|&i| line.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}…", &line[..cut])
    } else {
        line.to_string()
    }
}

/// A scripted host for tests (unit and integration): answers commands by the first matching rule
/// and records every call.
pub mod fake {
    use super::{ExecOutput, Transport, TransportError};
    use std::sync::Mutex;

    /// One recorded call; `stdin` is kept so tests can check secrets went there.
    #[derive(Clone)]
    pub struct Call {
        pub command: String,
        pub stdin: Option<Vec<u8>>,
        pub sudo: bool,
    }

    /// Shows the size of stdin, not its bytes: they may be a secret, and a failing assertion
    /// prints its calls.
    impl std::fmt::Debug for Call {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Call")
                .field("command", &self.command)
                .field("stdin_bytes", &self.stdin.as_ref().map(Vec::len))
                .field("sudo", &self.sudo)
                .finish()
        }
    }

    /// A scripted answer: used for commands containing `needle`, `remaining` times (or forever).
    #[derive(Debug, Clone)]
    pub struct Rule {
        pub needle: String,
        pub output: ExecOutput,
        pub remaining: Option<usize>,
    }

    #[derive(Debug, Default)]
    pub struct FakeTransport {
        pub name: String,
        /// First match wins; unmatched commands succeed silently.
        pub rules: Mutex<Vec<Rule>>,
        pub calls: Mutex<Vec<Call>>,
    }

    impl FakeTransport {
        pub fn new(name: &str) -> Self {
            Self {
                name: name.to_string(),
                ..Self::default()
            }
        }

        /// Answers every command containing `needle`.
        pub fn answer(&self, needle: &str, status: i32, stdout: &str) {
            self.push_rule(needle, status, stdout, None);
        }

        /// Answers the next `times` commands containing `needle`, then lets later rules answer.
        pub fn answer_times(&self, needle: &str, times: usize, status: i32, stdout: &str) {
            self.push_rule(needle, status, stdout, Some(times));
        }

        fn push_rule(&self, needle: &str, status: i32, stdout: &str, remaining: Option<usize>) {
            let output = ExecOutput {
                status,
                stdout: stdout.as_bytes().to_vec(),
                stderr: Vec::new(),
            };
            self.rules.lock().expect("rules lock").push(Rule {
                needle: needle.to_string(),
                output,
                remaining,
            });
        }

        pub fn calls(&self) -> Vec<Call> {
            self.calls.lock().expect("calls lock").clone()
        }

        /// Every command run, one per line, for `contains` assertions.
        pub fn transcript(&self) -> String {
            self.calls()
                .iter()
                .map(|call| call.command.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        }
    }

    impl Transport for FakeTransport {
        fn host(&self) -> &str {
            &self.name
        }

        fn exec(
            &self,
            command: &str,
            stdin: Option<&[u8]>,
            sudo: bool,
        ) -> Result<ExecOutput, TransportError> {
            self.calls.lock().expect("calls lock").push(Call {
                command: command.to_string(),
                stdin: stdin.map(<[u8]>::to_vec),
                sudo,
            });
            let mut rules = self.rules.lock().expect("rules lock");
            let rule = rules
                .iter_mut()
                .find(|rule| rule.remaining != Some(0) && command.contains(rule.needle.as_str()));
            Ok(match rule {
                Some(rule) => {
                    if let Some(remaining) = rule.remaining.as_mut() {
                        *remaining -= 1;
                    }
                    rule.output.clone()
                }
                None => ExecOutput::default(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes_and_spaces() {
        assert_eq!(
            shell_quote("/etc/billing/billing.env"),
            "/etc/billing/billing.env"
        );
        assert_eq!(shell_quote("it's a b"), r"'it'\''s a b'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn atomic_write_renames_a_temp_file_of_the_same_directory() {
        let script = write_file_script("/etc/billing/billing.env", 0o600, "billing", "billing");
        assert!(
            script.contains("mktemp /etc/billing/.billing.env.provision.XXXXXX"),
            "{script}"
        );
        assert!(script.contains("chmod 600"), "{script}");
        assert!(
            script.contains("mv -f \"$tmp\" /etc/billing/billing.env"),
            "{script}"
        );
    }
}
