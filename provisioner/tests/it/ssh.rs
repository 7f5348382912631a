//! The SSH transport against a real OpenSSH server on 127.0.0.1 (started by the test, as root):
//! commands, stdin, atomic upload, host key recorded on first contact and a changed one refused.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use provisioner::converge::ssh::{HostKeyStatus, SshTransport};
use provisioner::converge::transport::{Transport, TransportError};
use provisioner::desired::Connection;

/// An sshd for one test; killed when dropped.
pub(crate) struct Sshd {
    child: Child,
    pub(crate) port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "provision-test",
            "-f",
        ])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success(), "ssh-keygen failed");
}

/// The bytes and permission bits of a file the transport uploaded.
fn file_and_mode(path: &Path) -> (Vec<u8>, u32) {
    let bytes = std::fs::read(path).expect("uploaded file");
    let mode = std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
    (bytes, mode)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn start_sshd(dir: &Path, host_key: &Path, port: u16) -> Sshd {
    std::fs::create_dir_all("/run/sshd").expect("privilege separation directory");
    let child = Command::new("/usr/sbin/sshd")
        .args([
            "-D",
            "-e",
            "-f",
            "/dev/null",
            "-p",
            &port.to_string(),
            "-o",
            "ListenAddress=127.0.0.1",
            "-h",
        ])
        .arg(host_key)
        .arg("-o")
        .arg(format!(
            "AuthorizedKeysFile={}",
            dir.join("authorized_keys").display()
        ))
        .args([
            "-o",
            "StrictModes=no",
            "-o",
            "UsePAM=no",
            "-o",
            "PermitRootLogin=prohibit-password",
        ])
        .arg("-o")
        .arg(format!(
            "PidFile={}",
            dir.join(format!("sshd-{port}.pid")).display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sshd starts (the test runs as root)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Sshd { child, port }
}

/// A temporary folder with a host key, a client key allowed in as root, and an sshd using them.
pub(crate) struct Lab {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) sshd: Sshd,
}

impl Lab {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        keygen(&dir.path().join("host_key"));
        keygen(&dir.path().join("client_key"));
        std::fs::copy(
            dir.path().join("client_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .expect("authorized_keys");
        let sshd = start_sshd(dir.path(), &dir.path().join("host_key"), free_port());
        Self { dir, sshd }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn connection(&self) -> Connection {
        Connection {
            address: "127.0.0.1".into(),
            port: self.sshd.port,
            user: "root".into(),
            private_key: self.path("client_key"),
            sudo: false,
            known_hosts: self.path("known/known_hosts"),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[test]
fn commands_stdin_and_atomic_upload_over_one_session() {
    let lab = Lab::new();
    let transport = SshTransport::connect("test-vm", &lab.connection()).expect("connects");
    assert_eq!(transport.host_key, HostKeyStatus::Recorded);

    let output = transport
        .exec("echo out; echo err >&2; exit 3", None, false)
        .expect("exec");
    assert_eq!((output.status, output.stdout_text().as_str()), (3, "out\n"));
    assert_eq!(output.stderr, b"err\n");

    let echoed = transport
        .exec("cat", Some(b"from stdin"), true)
        .expect("exec with stdin");
    assert_eq!(echoed.stdout, b"from stdin");

    let failed = transport
        .run("echo nope >&2; false", None, false)
        .expect_err("non-zero exit is an error");
    let message = failed.to_string();
    assert!(
        message.contains("test-vm") && message.contains("nope"),
        "{message}"
    );

    let target = lab.path("etc/app/app.env");
    let target_text = target.to_str().expect("utf-8 path");
    transport
        .write_file_atomic(target_text, b"SECRET=1\n", 0o600, "root", "root")
        .expect("upload");
    assert_eq!(file_and_mode(&target), (b"SECRET=1\n".to_vec(), 0o600));
    transport
        .write_file_atomic(target_text, b"SECRET=2\n", 0o640, "root", "root")
        .expect("replace");
    assert_eq!(file_and_mode(&target), (b"SECRET=2\n".to_vec(), 0o640));
    let leftovers: Vec<_> = std::fs::read_dir(lab.path("etc/app"))
        .expect("dir")
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");

    assert_eq!(
        transport.read_file(target_text).expect("read"),
        Some(b"SECRET=2\n".to_vec())
    );
    assert_eq!(
        transport
            .read_file(&format!("{target_text}.missing"))
            .expect("read"),
        None
    );

    // A large upload goes through stdin in one piece.
    let big: Vec<u8> = (0..3_000_000_u32).map(|i| (i % 251) as u8).collect();
    let big_path = lab.path("big.bin");
    transport
        .write_file_atomic(
            big_path.to_str().expect("utf-8"),
            &big,
            0o755,
            "root",
            "root",
        )
        .expect("big upload");
    assert_eq!(std::fs::read(&big_path).expect("big"), big);
}

#[test]
fn first_contact_records_the_host_key_and_a_changed_key_is_refused() {
    let lab = Lab::new();
    let connection = lab.connection();
    let first = SshTransport::connect("test-vm", &connection).expect("first contact");
    assert_eq!(first.host_key, HostKeyStatus::Recorded);
    let recorded = std::fs::read_to_string(&connection.known_hosts).expect("known_hosts written");
    assert!(
        recorded.contains(&format!("[127.0.0.1]:{}", lab.sshd.port)),
        "{recorded}"
    );

    let second = SshTransport::connect("test-vm", &connection).expect("known host");
    assert_eq!(second.host_key, HostKeyStatus::Known);

    // The machine is "rebuilt": same address and port, another host key.
    keygen(&lab.path("other_host_key"));
    let port = lab.sshd.port;
    drop(lab.sshd);
    let _rebuilt = start_sshd(lab.dir.path(), &lab.dir.path().join("other_host_key"), port);
    let refused = SshTransport::connect("test-vm", &connection).expect_err("changed key refused");
    assert!(
        matches!(refused, TransportError::HostKeyMismatch { .. }),
        "{refused}"
    );
    let message = refused.to_string();
    assert!(
        message.starts_with("test-vm:") && message.contains("does not match"),
        "{message}"
    );
    let after = std::fs::read_to_string(&connection.known_hosts).expect("known_hosts");
    assert_eq!(after, recorded, "a refused key is not recorded");
}

#[test]
fn unreachable_host_and_refused_key_are_one_line_errors_naming_the_host() {
    let lab = Lab::new();
    let mut closed = lab.connection();
    closed.port = free_port();
    let error = SshTransport::connect("gone-vm", &closed).expect_err("nothing listens");
    let message = error.to_string();
    assert!(
        message.starts_with("gone-vm: cannot connect") && !message.contains('\n'),
        "{message}"
    );

    keygen(&lab.path("stranger_key"));
    let mut stranger = lab.connection();
    stranger.private_key = lab.path("stranger_key");
    let error = SshTransport::connect("test-vm", &stranger).expect_err("key not authorized");
    assert!(matches!(error, TransportError::Auth { .. }), "{error}");
    assert!(
        error
            .to_string()
            .starts_with("test-vm: key authentication as root refused"),
        "{error}"
    );
}

/// A command that prints nothing for longer than both the connect timeout and libssh2's old
/// keepalive interval (15 s) must still finish: `apt-get install` and `systemctl restart
/// rabbitmq-server` are silent for that long, and used to fail with "Timed out waiting on socket".
#[test]
fn a_long_silent_command_outlives_the_connect_timeout_and_keepalive_ticks() {
    let lab = Lab::new();
    let mut connection = lab.connection();
    connection.connect_timeout = Duration::from_secs(1);
    let transport = SshTransport::connect("test-vm", &connection).expect("connects");
    let started = Instant::now();
    let output = transport
        .run("sleep 17; echo finished", None, true)
        .expect("a 17 s silent command is no timeout");
    assert_eq!(output.stdout_text(), "finished\n");
    assert!(started.elapsed() >= Duration::from_secs(17));
    // The session is still usable afterwards.
    let again = transport
        .run("echo again", None, false)
        .expect("next command");
    assert_eq!(again.stdout_text(), "again\n");
}

#[test]
fn a_key_path_with_a_star_uses_the_one_vagrant_provider_that_made_the_machine() {
    let lab = Lab::new();
    let machine = lab.path(".vagrant/machines/test-vm");
    let mut connection = lab.connection();
    connection.private_key = machine.join("*/private_key");

    // No provider has made the machine yet.
    let error = SshTransport::connect("test-vm", &connection).expect_err("no key yet");
    assert!(matches!(error, TransportError::Key { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("has `vagrant up` made this machine?"),
        "{error}"
    );

    // `vagrant up --provider=lxc` wrote its key; a destroyed virtualbox machine left an empty folder.
    std::fs::create_dir_all(machine.join("lxc")).expect("mkdir");
    std::fs::create_dir_all(machine.join("virtualbox")).expect("mkdir");
    std::fs::copy(lab.path("client_key"), machine.join("lxc/private_key")).expect("copy key");
    SshTransport::connect("test-vm", &connection).expect("the lxc key is used");

    // Two providers' machines at once: which key is meant cannot be guessed.
    std::fs::copy(
        lab.path("client_key"),
        machine.join("virtualbox/private_key"),
    )
    .expect("copy");
    let error = SshTransport::connect("test-vm", &connection).expect_err("ambiguous");
    let message = error.to_string();
    assert!(
        message.starts_with("test-vm: private key:")
            && message.contains("lxc/private_key")
            && message.contains("virtualbox/private_key"),
        "{message}"
    );
}
