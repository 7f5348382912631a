//! The real [`Transport`]: one ssh2 session per host for the whole run, key authentication,
//! host keys checked against the inventory's known_hosts file, a channel per command.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ssh2::{CheckResult, KnownHostFileKind, Session};

use crate::converge::transport::{shell_quote, ExecOutput, Transport, TransportError};
use crate::desired::Connection;

/// Hosts connect in parallel but share one known_hosts file: its read-check-append is serialised.
static KNOWN_HOSTS_LOCK: Mutex<()> = Mutex::new(());

/// How long one blocking step of a command (a read, a write) may wait for the host: long enough
/// for `apt-get install postgresql rabbitmq-server` on a slow mirror, which prints nothing (its
/// output goes to /dev/null) for minutes, short enough that a wedged host does not hang the run
/// forever. A host that vanished is noticed much sooner, by TCP keepalive.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(900);

/// TCP keepalive: a silent connection is probed after this long…
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
/// …every this long, and declared dead after this many unanswered probes (about 35 s in all).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 4;

/// What the connection reported about the host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// The key matched the known_hosts entry.
    Known,
    /// First contact: the key was appended to known_hosts.
    Recorded,
}

pub struct SshTransport {
    name: String,
    user: String,
    sudo: bool,
    session: Session,
    /// Whether this connection recorded a new host key (the CLI says so once).
    pub host_key: HostKeyStatus,
}

impl std::fmt::Debug for SshTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTransport")
            .field("name", &self.name)
            .field("user", &self.user)
            .field("sudo", &self.sudo)
            .field("host_key", &self.host_key)
            .finish_non_exhaustive()
    }
}

impl SshTransport {
    /// Connects, checks the host key, authenticates with the private key and, when the host
    /// uses sudo, checks that `sudo -n` works so that a missing sudoers entry fails here in one line.
    pub fn connect(name: &str, connection: &Connection) -> Result<Self, TransportError> {
        let address = format!("{}:{}", connection.address, connection.port);
        let connect_error = |message: String| TransportError::Connect {
            host: name.to_string(),
            address: address.clone(),
            message,
        };
        let timeout = if connection.connect_timeout.is_zero() {
            Duration::from_secs(10)
        } else {
            connection.connect_timeout
        };
        let socket_address = address
            .to_socket_addrs()
            .map_err(|error| connect_error(error.to_string()))?
            .next()
            .ok_or_else(|| connect_error("the address resolves to nothing".into()))?;
        let tcp = TcpStream::connect_timeout(&socket_address, timeout)
            .map_err(|error| connect_error(error.to_string()))?;
        // Keepalive at the TCP level, not libssh2's: in blocking mode libssh2 wakes up when its
        // next keepalive is due and fails the pending read with "Timed out waiting on socket",
        // so any command silent for longer than the interval (apt-get, a restart) would fail.
        socket2::SockRef::from(&tcp)
            .set_tcp_keepalive(
                &socket2::TcpKeepalive::new()
                    .with_time(KEEPALIVE_IDLE)
                    .with_interval(KEEPALIVE_INTERVAL)
                    .with_retries(KEEPALIVE_PROBES),
            )
            .map_err(|error| connect_error(format!("TCP keepalive: {error}")))?;

        let mut session = Session::new().map_err(|error| connect_error(error.to_string()))?;
        // The connect timeout bounds the handshake, authentication and the sudo check; commands
        // get COMMAND_TIMEOUT, set once the connection is up.
        session.set_timeout(millis(timeout));
        session.set_tcp_stream(tcp);
        session
            .handshake()
            .map_err(|error| connect_error(format!("ssh handshake: {error}")))?;

        let host_key = check_host_key(name, connection, &session)?;

        let private_key =
            key_file(&connection.private_key).map_err(|message| TransportError::Key {
                host: name.to_string(),
                message,
            })?;
        session
            .userauth_pubkey_file(&connection.user, None, &private_key, None)
            .map_err(|error| TransportError::Auth {
                host: name.to_string(),
                user: connection.user.clone(),
                key: private_key.display().to_string(),
                message: error.message().to_string(),
            })?;
        if !session.authenticated() {
            return Err(TransportError::Auth {
                host: name.to_string(),
                user: connection.user.clone(),
                key: private_key.display().to_string(),
                message: "not authenticated".into(),
            });
        }

        let transport = Self {
            name: name.to_string(),
            user: connection.user.clone(),
            sudo: connection.sudo,
            session,
            host_key,
        };
        if transport.sudo {
            let output = transport.exec_raw("sudo -n true", None)?;
            if !output.success() {
                return Err(TransportError::Sudo {
                    host: transport.name.clone(),
                    user: transport.user.clone(),
                    message: output.error_line(),
                });
            }
        }
        transport.session.set_timeout(millis(COMMAND_TIMEOUT));
        Ok(transport)
    }

    fn session_error(&self, what: &str, error: impl std::fmt::Display) -> TransportError {
        TransportError::Session {
            host: self.name.clone(),
            message: format!("{what}: {error}"),
        }
    }

    /// Wraps a privileged command so it runs as root through `sudo -n` (never prompting).
    fn privileged(&self, command: &str, sudo: bool) -> String {
        if sudo && self.sudo {
            format!("sudo -n sh -c {}", shell_quote(command))
        } else {
            command.to_string()
        }
    }

    fn exec_raw(&self, command: &str, stdin: Option<&[u8]>) -> Result<ExecOutput, TransportError> {
        let mut channel = self
            .session
            .channel_session()
            .map_err(|error| self.session_error("open channel", error))?;
        channel
            .exec(command)
            .map_err(|error| self.session_error("exec", error))?;
        if let Some(bytes) = stdin {
            channel
                .write_all(bytes)
                .map_err(|error| self.session_error("send stdin", error))?;
        }
        channel
            .send_eof()
            .map_err(|error| self.session_error("send eof", error))?;
        let mut stdout = Vec::new();
        channel
            .read_to_end(&mut stdout)
            .map_err(|error| self.session_error("read stdout", error))?;
        let mut stderr = Vec::new();
        channel
            .stderr()
            .read_to_end(&mut stderr)
            .map_err(|error| self.session_error("read stderr", error))?;
        channel
            .wait_close()
            .map_err(|error| self.session_error("close channel", error))?;
        let status = channel.exit_status().unwrap_or(-1);
        Ok(ExecOutput {
            status,
            stdout,
            stderr,
        })
    }
}

impl Transport for SshTransport {
    fn host(&self) -> &str {
        &self.name
    }

    fn exec(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        sudo: bool,
    ) -> Result<ExecOutput, TransportError> {
        self.exec_raw(&self.privileged(command, sudo), stdin)
    }

    fn exec_streaming(
        &self,
        command: &str,
        sudo: bool,
        out: &mut dyn Write,
    ) -> Result<i32, TransportError> {
        let mut channel = self
            .session
            .channel_session()
            .map_err(|error| self.session_error("open channel", error))?;
        // Merged stderr keeps one ordered stream, and `journalctl -f` may stay silent for hours.
        channel
            .handle_extended_data(ssh2::ExtendedData::Merge)
            .map_err(|error| self.session_error("merge stderr", error))?;
        self.session.set_timeout(0);
        let result = (|| {
            channel
                .exec(&self.privileged(command, sudo))
                .map_err(|error| self.session_error("exec", error))?;
            let mut buffer = [0_u8; 8192];
            loop {
                let read = channel
                    .read(&mut buffer)
                    .map_err(|error| self.session_error("read", error))?;
                if read == 0 {
                    break;
                }
                if out
                    .write_all(&buffer[..read])
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    // The local reader went away (e.g. `| head`): stop quietly.
                    return Ok(0);
                }
            }
            channel
                .wait_close()
                .map_err(|error| self.session_error("close channel", error))?;
            Ok(channel.exit_status().unwrap_or(-1))
        })();
        self.session.set_timeout(millis(COMMAND_TIMEOUT));
        result
    }
}

/// Checks the server's key against known_hosts; an unknown host is appended (first contact),
/// a different key is refused.
fn check_host_key(
    name: &str,
    connection: &Connection,
    session: &Session,
) -> Result<HostKeyStatus, TransportError> {
    let host_key_error = |message: String| TransportError::HostKey {
        host: name.to_string(),
        message,
    };
    let (key, key_type) = session
        .host_key()
        .ok_or_else(|| host_key_error("the server sent no host key".into()))?;
    let path = connection.known_hosts.as_path();
    let _guard = KNOWN_HOSTS_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut known_hosts = session
        .known_hosts()
        .map_err(|error| host_key_error(error.to_string()))?;
    if path.exists() {
        known_hosts
            .read_file(path, KnownHostFileKind::OpenSSH)
            .map_err(|error| host_key_error(format!("reading {}: {error}", path.display())))?;
    }
    match known_hosts.check_port(&connection.address, connection.port, key) {
        CheckResult::Match => Ok(HostKeyStatus::Known),
        CheckResult::Mismatch => Err(TransportError::HostKeyMismatch {
            host: name.to_string(),
            address: format!("{}:{}", connection.address, connection.port),
            known_hosts: path.display().to_string(),
        }),
        CheckResult::Failure => Err(host_key_error(format!(
            "cannot check against {}",
            path.display()
        ))),
        CheckResult::NotFound => {
            let entry = if connection.port == 22 {
                connection.address.clone()
            } else {
                format!("[{}]:{}", connection.address, connection.port)
            };
            known_hosts
                .add(&entry, key, name, key_type.into())
                .map_err(|error| host_key_error(error.to_string()))?;
            write_known_hosts(path, &known_hosts).map_err(host_key_error)?;
            Ok(HostKeyStatus::Recorded)
        }
    }
}

fn write_known_hosts(path: &Path, known_hosts: &ssh2::KnownHosts) -> Result<(), String> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .map_err(|error| format!("creating {}: {error}", parent.display()))?;
    }
    known_hosts
        .write_file(path, KnownHostFileKind::OpenSSH)
        .map_err(|error| format!("writing {}: {error}", path.display()))
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

/// The key file of an inventory's `private_key`: the path itself, or, when one folder name in it
/// is `*` (validated by the inventory), the one existing file it matches. Vagrant keeps a
/// machine's key under `.vagrant/machines/NAME/PROVIDER/` and empties that folder when the
/// machine is destroyed, so exactly one provider's key exists for a machine that is up.
pub fn key_file(pattern: &Path) -> Result<PathBuf, String> {
    let components: Vec<_> = pattern.components().collect();
    let Some(star) = components.iter().position(|c| c.as_os_str() == "*") else {
        return Ok(pattern.to_owned());
    };
    let folder: PathBuf = components[..star].iter().collect();
    let rest: PathBuf = components[star + 1..].iter().collect();
    let entries = std::fs::read_dir(if folder.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &folder
    })
    .map_err(|error| {
        format!(
            "no file matches {} ({}: {error}; has `vagrant up` made this machine?)",
            pattern.display(),
            folder.display()
        )
    })?;
    let mut matches: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| folder.join(entry.file_name()).join(&rest))
        .filter(|candidate| candidate.is_file())
        .collect();
    matches.sort();
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => Err(format!(
            "no file matches {} (has `vagrant up` made this machine?)",
            pattern.display()
        )),
        _ => Err(format!(
            "{} matches several files ({}): keep one, e.g. `vagrant destroy` the machines of the \
             other provider, or name the file in the inventory",
            pattern.display(),
            matches
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
