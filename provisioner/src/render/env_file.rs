//! The `.env` file: credentials and names of the original design, read without touching the
//! process environment, passwords kept as [`Secret`]s from the moment they are read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::desired::Secret;

#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    /// The I/O cause is the source, printed by the command\'s error chain, so not repeated here.
    #[error("cannot read env file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// dotenvy reports the line's text, which may hold a password: only the line number is kept.
    #[error("{path}, line {line}: cannot parse this line (expected NAME=value)")]
    Syntax { path: PathBuf, line: usize },
    #[error("{path}: required variable {name} is missing (see .env.example)")]
    Missing { path: PathBuf, name: String },
    #[error("{path}: variable {name} is empty")]
    Empty { path: PathBuf, name: String },
    /// Names go unquoted into SQL, pg_hba.conf and rabbitmqctl: keep them plain identifiers.
    #[error(
        "{path}: {name} must be a plain name (letters, digits and `_`, not starting with a digit)"
    )]
    NotAName { path: PathBuf, name: String },
}

/// The variables of one `.env` file. Any variable whose name ends in `_PASSWORD` is a secret: it
/// never appears in `Debug` output and cannot be interpolated into the inventory.
#[derive(Debug, Clone)]
pub struct EnvFile {
    path: PathBuf,
    plain: BTreeMap<String, String>,
    secrets: BTreeMap<String, Secret>,
}

/// A database and the role that owns it.
#[derive(Debug, Clone)]
pub struct DatabaseCredentials {
    pub name: String,
    pub user: String,
    pub password: Secret,
}

/// The broker's application user (the vhost and queue come from the inventory's settings).
#[derive(Debug, Clone)]
pub struct BrokerCredentials {
    pub user: String,
    pub password: Secret,
}

/// Whether `name` holds a password or another secret (`_PASSWORD`, `_SECRET`).
pub fn is_secret_name(name: &str) -> bool {
    name.ends_with("_PASSWORD") || name.ends_with("_SECRET")
}

/// Letters, digits and `_`, not starting with a digit: safe unquoted in SQL, pg_hba.conf and
/// rabbitmqctl arguments.
fn is_plain_name(value: &str) -> bool {
    value.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl EnvFile {
    /// Reads `path` and checks that every `required` variable is present and not empty: the
    /// credentials and names of the databases and of the broker, which the platform description
    /// lists ([`crate::render::platform::Platform::required_variables`]). Addresses and ports
    /// (`GATEWAY_VM_IP`, `INVENTORY_API_PORT`, …) are needed only when the inventory refers to them
    /// with `${VAR}`, and then a missing one is named by the inventory's error.
    pub fn load(path: &Path, required: &[String]) -> Result<Self, EnvFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| EnvFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, required)
    }

    /// Parses `text` as if read from `path` (which only names the file in errors).
    pub fn parse(path: &Path, text: &str, required: &[String]) -> Result<Self, EnvFileError> {
        let mut plain = BTreeMap::new();
        let mut secrets = BTreeMap::new();
        for item in dotenvy::from_read_iter(text.as_bytes()) {
            let (name, value) = item.map_err(|error| syntax_error(path, text, &error))?;
            if is_secret_name(&name) {
                plain.remove(&name);
                secrets.insert(name, Secret::new(value));
            } else {
                plain.insert(name, value);
            }
        }
        let env = Self {
            path: path.to_owned(),
            plain,
            secrets,
        };
        for name in required.iter().map(String::as_str) {
            let value = env
                .plain
                .get(name)
                .map(String::as_str)
                .or_else(|| env.secrets.get(name).map(Secret::expose));
            match value {
                None => {
                    return Err(EnvFileError::Missing {
                        path: path.to_owned(),
                        name: name.to_owned(),
                    })
                }
                Some("") => {
                    return Err(EnvFileError::Empty {
                        path: path.to_owned(),
                        name: name.to_owned(),
                    })
                }
                Some(value) if !is_secret_name(name) && !is_plain_name(value) => {
                    return Err(EnvFileError::NotAName {
                        path: path.to_owned(),
                        name: name.to_owned(),
                    })
                }
                Some(_) => {}
            }
        }
        Ok(env)
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A variable that is not a password.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.plain.get(name).map(String::as_str)
    }

    /// A password variable.
    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(name)
    }

    /// Whether `name` is defined, secret or not.
    pub fn contains(&self, name: &str) -> bool {
        self.plain.contains_key(name) || self.secrets.contains_key(name)
    }

    pub fn broker(&self) -> BrokerCredentials {
        BrokerCredentials {
            user: self.required_plain("RABBITMQ_USER"),
            password: self.required_secret("RABBITMQ_PASSWORD"),
        }
    }

    /// The database whose credentials are `<prefix>_DB_NAME`, `_DB_USER` and `_DB_PASSWORD`.
    pub fn database(&self, prefix: &str) -> DatabaseCredentials {
        DatabaseCredentials {
            name: self.required_plain(&format!("{prefix}_DB_NAME")),
            user: self.required_plain(&format!("{prefix}_DB_USER")),
            password: self.required_secret(&format!("{prefix}_DB_PASSWORD")),
        }
    }

    /// [`Self::parse`] checked the variables the platform requires, so a miss here is a bug of
    /// the caller; an empty value keeps the accessors infallible rather than panicking.
    fn required_plain(&self, name: &str) -> String {
        self.plain.get(name).cloned().unwrap_or_default()
    }

    fn required_secret(&self, name: &str) -> Secret {
        self.secrets
            .get(name)
            .cloned()
            .unwrap_or_else(|| Secret::new(""))
    }
}

fn syntax_error(path: &Path, text: &str, error: &dotenvy::Error) -> EnvFileError {
    let line = match error {
        // dotenvy gives the offending text, not its line number: find it in the file.
        dotenvy::Error::LineParse(bad, _) => text
            .lines()
            .position(|line| line.contains(bad.trim_end()) || bad.starts_with(line))
            .map_or(0, |index| index + 1),
        _ => 0,
    };
    EnvFileError::Syntax {
        path: path.to_owned(),
        line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPLETE: &str = "\
INVENTORY_DB_NAME=movies_db
INVENTORY_DB_USER=inventory_user
INVENTORY_DB_PASSWORD=inventory_password
BILLING_DB_NAME=billing_db
BILLING_DB_USER=billing_user
BILLING_DB_PASSWORD='billing p@ss:w/rd'
RABBITMQ_USER=rabbitmq_user
RABBITMQ_PASSWORD=rabbitmq_password
GATEWAY_VM_IP=192.168.56.10
";

    /// What the committed platform description requires.
    fn required() -> Vec<String> {
        [
            "INVENTORY_DB_NAME",
            "INVENTORY_DB_USER",
            "INVENTORY_DB_PASSWORD",
            "BILLING_DB_NAME",
            "BILLING_DB_USER",
            "BILLING_DB_PASSWORD",
            "RABBITMQ_USER",
            "RABBITMQ_PASSWORD",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    #[test]
    fn reads_variables_and_keeps_passwords_secret() {
        let env = EnvFile::parse(Path::new("my.env"), COMPLETE, &required()).expect("parses");
        assert_eq!(env.get("GATEWAY_VM_IP"), Some("192.168.56.10"));
        assert_eq!(env.get("BILLING_DB_PASSWORD"), None);
        assert_eq!(
            env.database("BILLING").password.expose(),
            "billing p@ss:w/rd"
        );
        assert_eq!(env.database("INVENTORY").name, "movies_db");
        assert_eq!(env.broker().user, "rabbitmq_user");
        let shown = format!("{env:?}");
        assert!(!shown.contains("rabbitmq_password"), "{shown}");
        assert!(!shown.contains("p@ss"), "{shown}");
    }

    #[test]
    fn does_not_touch_the_process_environment() {
        let _env = EnvFile::parse(Path::new("my.env"), COMPLETE, &required()).expect("parses");
        assert!(std::env::var_os("INVENTORY_DB_NAME").is_none());
    }

    #[test]
    fn a_missing_variable_is_named_with_the_file() {
        let text = COMPLETE.replace("RABBITMQ_PASSWORD=rabbitmq_password\n", "");
        let error =
            EnvFile::parse(Path::new("conf/prod.env"), &text, &required()).expect_err("missing");
        let message = error.to_string();
        assert!(message.contains("conf/prod.env"), "{message}");
        assert!(message.contains("RABBITMQ_PASSWORD"), "{message}");
    }

    #[test]
    fn an_empty_variable_is_named() {
        let text = COMPLETE.replace("BILLING_DB_USER=billing_user", "BILLING_DB_USER=");
        let message = EnvFile::parse(Path::new("x.env"), &text, &required())
            .expect_err("empty")
            .to_string();
        assert!(message.contains("BILLING_DB_USER"), "{message}");
    }

    #[test]
    fn names_must_be_plain_identifiers() {
        let text = COMPLETE.replace(
            "BILLING_DB_NAME=billing_db",
            "BILLING_DB_NAME='billing\"; drop'",
        );
        let message = EnvFile::parse(Path::new("x.env"), &text, &required())
            .expect_err("not a name")
            .to_string();
        assert!(message.contains("BILLING_DB_NAME"), "{message}");
        assert!(message.contains("plain name"), "{message}");
    }

    #[test]
    fn a_syntax_error_names_the_line_without_its_content() {
        let text = format!("{COMPLETE}BROKEN LINE hunter2\n");
        let message = EnvFile::parse(Path::new("x.env"), &text, &required())
            .expect_err("syntax")
            .to_string();
        assert!(message.contains("x.env, line 10"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let message = EnvFile::load(Path::new("/nonexistent/dir/.env"), &required())
            .expect_err("missing file")
            .to_string();
        assert!(message.contains("/nonexistent/dir/.env"), "{message}");
    }
}
