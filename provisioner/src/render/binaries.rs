//! The service binaries pushed to the hosts: found in `--binaries DIR` or built from the
//! workspace, refused when they are not ELF executables for the hosts' architecture, with their
//! SHA-256 and the newest glibc symbol version they need (read from the ELF with the `object`
//! crate, no external tool).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use object::elf::{FileHeader64, EM_AARCH64, EM_X86_64, ET_DYN, ET_EXEC};
use object::read::elf::FileHeader;
use object::Endianness;
use sha2::{Digest, Sha256};

pub use crate::desired::Arch;

/// The newest glibc the binaries may need: Ubuntu 22.04 ships 2.35 (Debian 12 ships 2.36).
pub const MAX_GLIBC: GlibcVersion = GlibcVersion {
    major: 2,
    minor: 35,
};

/// A `GLIBC_major.minor` symbol version (a third component, as in `GLIBC_2.2.5`, is dropped:
/// it never decides whether a distribution's glibc is new enough).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GlibcVersion {
    pub major: u32,
    pub minor: u32,
}

impl GlibcVersion {
    /// Parses `GLIBC_2.34` or `GLIBC_2.2.5`; `None` for anything else (`GLIBC_PRIVATE`, …).
    pub fn parse(symbol_version: &str) -> Option<Self> {
        let rest = symbol_version.strip_prefix("GLIBC_")?;
        let mut parts = rest.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }
}

impl fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GLIBC_{}.{}", self.major, self.minor)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    /// The I/O cause is the source, printed by the command\'s error chain, so not repeated here.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no such binary (expected {expected} in {dir})")]
    Missing {
        path: PathBuf,
        dir: PathBuf,
        expected: String,
    },
    #[error("{path} is not an ELF executable: {reason}")]
    NotElf { path: PathBuf, reason: String },
    #[error("{path} is built for {found}, but the hosts are {expected}: refusing to deploy it")]
    WrongArch {
        path: PathBuf,
        found: String,
        expected: Arch,
    },
    #[error("{path} needs {needed}, newer than {max} (glibc of Ubuntu 22.04): build it on an older system or link it statically")]
    GlibcTooNew {
        path: PathBuf,
        needed: GlibcVersion,
        max: GlibcVersion,
    },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}); its output is above")]
    CommandFailed { command: String, status: String },
    #[error("cannot understand `cargo metadata` output: {0}")]
    Metadata(String),
}

/// One checked binary.
#[derive(Debug, Clone)]
pub struct Binary {
    /// Service (and unit, package and binary) name, e.g. `gateway`.
    pub service: String,
    pub path: PathBuf,
    /// Lower-case hex SHA-256 of the file, as `sha256sum` prints it on the host.
    pub sha256: String,
    pub arch: Arch,
}

/// The binaries of the platform's services, checked.
#[derive(Debug, Clone)]
pub struct BinarySet {
    binaries: Vec<Binary>,
}

impl BinarySet {
    /// Takes the binaries of `services` from `dir` when given, else builds them in `workspace`
    /// (cargo itself does nothing when they are fresh), then checks each one.
    pub fn locate(
        dir: Option<&Path>,
        workspace: &Path,
        services: &[&str],
        arch: Arch,
    ) -> Result<Self, BinaryError> {
        let dir = match dir {
            Some(dir) => dir.to_owned(),
            None => build(workspace, services, Profile::Release)?,
        };
        Self::from_dir(&dir, services, arch)
    }

    /// Checks the binary of each of `services` in `dir`: present, ELF for `arch`, needing no
    /// glibc newer than [`MAX_GLIBC`], hashed. Nothing is pushed before all of them pass.
    pub fn from_dir(dir: &Path, services: &[&str], arch: Arch) -> Result<Self, BinaryError> {
        let binaries = services
            .iter()
            .map(|service| {
                let path = dir.join(service);
                if !path.is_file() {
                    return Err(BinaryError::Missing {
                        path,
                        dir: dir.to_owned(),
                        expected: services.join(", "),
                    });
                }
                let binary = check_binary(service, &path, arch)?;
                check_glibc(&path, MAX_GLIBC)?;
                Ok(binary)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { binaries })
    }

    /// The binary of `service`, if it was checked.
    pub fn get(&self, service: &str) -> Option<&Binary> {
        self.binaries
            .iter()
            .find(|binary| binary.service == service)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Binary> {
        self.binaries.iter()
    }
}

/// Reads `path`, refuses it unless it is an ELF executable for `arch`, and hashes it.
pub fn check_binary(service: &str, path: &Path, arch: Arch) -> Result<Binary, BinaryError> {
    let bytes = read(path)?;
    let found = elf_arch(&bytes).map_err(|reason| BinaryError::NotElf {
        path: path.to_owned(),
        reason,
    })?;
    if found != Ok(arch) {
        return Err(BinaryError::WrongArch {
            path: path.to_owned(),
            found: match found {
                Ok(other) => other.to_string(),
                Err(machine) => format!("ELF machine {machine:#x}"),
            },
            expected: arch,
        });
    }
    Ok(Binary {
        service: service.to_owned(),
        path: path.to_owned(),
        sha256: sha256_hex(&bytes),
        arch,
    })
}

/// A cargo profile the services are built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `dev`, in `<target>/debug`: what the workspace's tests run.
    Dev,
    /// `release`, in `<target>/release`: what is deployed.
    Release,
}

impl Profile {
    /// The folder of `<target dir>` its binaries land in.
    pub fn folder(self) -> &'static str {
        match self {
            Self::Dev => "debug",
            Self::Release => "release",
        }
    }
}

/// The one build command of the platform's services in `workspace`. Cargo unifies dependency
/// features over the packages (and for tests, their dev-dependencies) one command selects, so
/// another command would give other binaries:
/// - [`Profile::Release`]: `cargo build --locked --release -p <service>…`, every service in one
///   command, or plan would see every binary as changed. `provision build` runs it, and so do plan
///   and apply without `--binaries`, `scripts/build-release` and the bench.
/// - [`Profile::Dev`]: `cargo test --locked --workspace --no-run`, the build of the README's test
///   command (`services` unused: it builds every binary of the workspace), which the end-to-end
///   tests run themselves: under that command it has nothing to do, where `cargo build -p …` would
///   build 64 crates a second time.
///
/// Returns the folder holding the binaries (`<target dir>/<profile>`, the target dir asked of
/// `cargo metadata` so `CARGO_TARGET_DIR` and `.cargo/config.toml` are honoured).
pub fn build(
    workspace: &Path,
    services: &[&str],
    profile: Profile,
) -> Result<PathBuf, BinaryError> {
    let args = match profile {
        Profile::Dev => vec!["test", "--locked", "--workspace", "--no-run"],
        Profile::Release => {
            let mut args = vec!["build", "--locked", "--release"];
            for service in services {
                args.extend(["-p", service]);
            }
            args
        }
    };
    let command = format!("cargo {}", args.join(" "));
    // cargo's progress goes to our stderr, where the user sees it live.
    let status = cargo(workspace)
        .args(&args)
        .status()
        .map_err(|source| BinaryError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !status.success() {
        return Err(BinaryError::CommandFailed {
            command,
            status: status.to_string(),
        });
    }
    Ok(target_directory(workspace)?.join(profile.folder()))
}

/// The beginnings of the environment variables cargo sets for a crate it runs (besides `OUT_DIR`),
/// as the Cargo Book lists them.
const CRATE_VARIABLES: [&str; 7] = [
    "CARGO_MANIFEST_",
    "CARGO_PKG_",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
];

/// `cargo` (the one that runs us, if any) in `workspace`, without the variables cargo set for
/// provision itself when it runs it (`cargo run -p provisioner`, as scripts/build-release does).
/// Passed on, they change what some build scripts see: ring's reruns when CARGO_MANIFEST_DIR
/// changes, and with it the 21 crates above it, so builds run from `cargo run` and from a shell
/// took turns to rebuild them (`provision plan` in lab-e2e, after scripts/build-release).
fn cargo(workspace: &Path) -> Command {
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.current_dir(workspace);
    for (name, _) in std::env::vars_os() {
        let set_for_crate = name.to_str().is_some_and(|name| {
            name == "OUT_DIR" || CRATE_VARIABLES.iter().any(|start| name.starts_with(start))
        });
        if set_for_crate {
            cargo.env_remove(name);
        }
    }
    cargo
}

/// The workspace's target directory, from `cargo metadata --format-version 1 --no-deps`.
pub fn target_directory(workspace: &Path) -> Result<PathBuf, BinaryError> {
    let command = "cargo metadata --format-version 1 --no-deps";
    let output = cargo(workspace)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .map_err(|source| BinaryError::Spawn {
            command: command.to_owned(),
            source,
        })?;
    if !output.status.success() {
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        return Err(BinaryError::CommandFailed {
            command: command.to_owned(),
            status: output.status.to_string(),
        });
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|error| BinaryError::Metadata(error.to_string()))?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| BinaryError::Metadata("no target_directory".to_owned()))
}

pub use crate::desired::sha256_hex;

/// Lower-case hex SHA-256 of a file, read in chunks.
pub fn sha256_file(path: &Path) -> Result<String, BinaryError> {
    let read_error = |source| BinaryError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 16];
    loop {
        let count = file.read(&mut buffer).map_err(read_error)?;
        if count == 0 {
            break;
        }
        hasher.update(&buffer[..count]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The newest `GLIBC_x.y` the binary at `path` needs; `None` when it needs no glibc (static).
pub fn max_glibc(path: &Path) -> Result<Option<GlibcVersion>, BinaryError> {
    let bytes = read(path)?;
    let versions = required_glibc_versions(&bytes).map_err(|reason| BinaryError::NotElf {
        path: path.to_owned(),
        reason,
    })?;
    Ok(versions.into_iter().max())
}

/// Refuses a binary that needs a glibc newer than `max`.
pub fn check_glibc(path: &Path, max: GlibcVersion) -> Result<(), BinaryError> {
    match max_glibc(path)? {
        Some(needed) if needed > max => Err(BinaryError::GlibcTooNew {
            path: path.to_owned(),
            needed,
            max,
        }),
        _ => Ok(()),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, BinaryError> {
    std::fs::read(path).map_err(|source| BinaryError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The ELF header of a 64-bit ELF file, and its byte order.
fn elf_header(bytes: &[u8]) -> Result<(&FileHeader64<Endianness>, Endianness), String> {
    let header = FileHeader64::<Endianness>::parse(bytes)
        .map_err(|error| format!("not a 64-bit ELF file ({error})"))?;
    let endian = header.endian().map_err(|error| error.to_string())?;
    Ok((header, endian))
}

/// The architecture of a 64-bit ELF executable: `Ok(Ok(arch))` for a known one,
/// `Ok(Err(e_machine))` for another machine, `Err(reason)` when it is no such executable.
pub fn elf_arch(bytes: &[u8]) -> Result<Result<Arch, u16>, String> {
    let (header, endian) = elf_header(bytes)?;
    let kind = header.e_type(endian);
    if kind != ET_EXEC && kind != ET_DYN {
        return Err(format!("ELF type {kind} is not an executable"));
    }
    Ok(match header.e_machine(endian) {
        EM_X86_64 => Ok(Arch::X86_64),
        EM_AARCH64 => Ok(Arch::Aarch64),
        other => Err(other),
    })
}

/// Every `GLIBC_x.y` version named in the ELF's version needs (`.gnu.version_r`), sorted and
/// without duplicates.
pub fn required_glibc_versions(bytes: &[u8]) -> Result<Vec<GlibcVersion>, String> {
    let (header, endian) = elf_header(bytes)?;
    let malformed = |error: object::read::Error| format!("malformed ELF ({error})");
    let sections = header.sections(endian, bytes).map_err(malformed)?;
    let mut versions = Vec::new();
    if let Some((mut needs, strings)) = sections.gnu_verneed(endian, bytes).map_err(malformed)? {
        let strings = sections
            .strings(endian, bytes, strings)
            .map_err(malformed)?;
        // One entry per library, each with one auxiliary entry per version it needs.
        while let Some((_, mut needed)) = needs.next().map_err(malformed)? {
            while let Some(version) = needed.next().map_err(malformed)? {
                let name = version.name(endian, strings).map_err(malformed)?;
                if let Some(version) = std::str::from_utf8(name).ok().and_then(GlibcVersion::parse)
                {
                    versions.push(version);
                }
            }
        }
    }
    versions.sort();
    versions.dedup();
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_executable() -> PathBuf {
        std::env::current_exe().expect("the test knows its own path")
    }

    fn host_arch() -> Arch {
        Arch::from_name(std::env::consts::ARCH).expect("tests run on x86_64 or aarch64")
    }

    #[test]
    fn reads_the_architecture_of_a_real_binary() {
        let bytes = std::fs::read(own_executable()).expect("readable");
        assert_eq!(elf_arch(&bytes), Ok(Ok(host_arch())));
    }

    #[test]
    fn lists_the_glibc_versions_a_real_binary_needs() {
        let bytes = std::fs::read(own_executable()).expect("readable");
        let versions = required_glibc_versions(&bytes).expect("an ELF");
        // Every dynamically linked Rust program on glibc needs at least GLIBC_2.2.5 or 2.17.
        assert!(!versions.is_empty(), "no GLIBC version found");
        assert!(versions.iter().all(|v| v.major == 2), "{versions:?}");
        // The reader must agree with the dynamic linker's view, as `objdump -T` would print it.
        if let Ok(output) = Command::new("objdump")
            .arg("-T")
            .arg(own_executable())
            .output()
        {
            let text = String::from_utf8_lossy(&output.stdout);
            let mut expected: Vec<GlibcVersion> = text
                .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
                .filter_map(GlibcVersion::parse)
                .collect();
            expected.sort();
            expected.dedup();
            assert_eq!(versions, expected);
        }
    }

    #[test]
    fn refuses_a_binary_for_another_architecture() {
        let mut bytes = std::fs::read(own_executable()).expect("readable");
        let other = match host_arch() {
            Arch::X86_64 => EM_AARCH64,
            Arch::Aarch64 => EM_X86_64,
        };
        bytes[18..20].copy_from_slice(&other.to_le_bytes());
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gateway");
        std::fs::write(&path, &bytes).expect("write");
        let error = check_binary("gateway", &path, host_arch()).expect_err("wrong arch");
        let message = error.to_string();
        assert!(message.contains("refusing"), "{message}");
        assert!(message.contains(host_arch().as_str()), "{message}");
    }

    #[test]
    fn refuses_a_file_that_is_not_elf() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("billing");
        std::fs::write(&path, "#!/bin/sh\necho hi\n").expect("write");
        let message = check_binary("billing", &path, Arch::X86_64)
            .expect_err("a script")
            .to_string();
        assert!(message.contains("not an ELF"), "{message}");
    }

    #[test]
    fn a_missing_binary_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let message = BinarySet::from_dir(dir.path(), &["gateway", "inventory"], Arch::X86_64)
            .expect_err("empty dir")
            .to_string();
        assert!(message.contains("gateway"), "{message}");
    }

    #[test]
    fn hashes_like_sha256sum() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").expect("write");
        assert_eq!(sha256_file(&path).expect("hash"), sha256_hex(b"abc"));
    }

    #[test]
    fn glibc_check_compares_versions_numerically() {
        let v = |s| GlibcVersion::parse(s).expect("parses");
        assert!(v("GLIBC_2.9") < v("GLIBC_2.35"));
        assert_eq!(v("GLIBC_2.2.5"), v("GLIBC_2.2"));
        assert_eq!(GlibcVersion::parse("GLIBC_PRIVATE"), None);
        // The test binary is built here (glibc 2.36): the check must at least accept 2.36.
        check_glibc(
            &own_executable(),
            GlibcVersion {
                major: 2,
                minor: 36,
            },
        )
        .expect("needs at most the build machine's glibc");
        let too_old = check_glibc(&own_executable(), GlibcVersion { major: 2, minor: 1 });
        assert!(matches!(too_old, Err(BinaryError::GlibcTooNew { .. })));
    }
}
