//! PostgreSQL SCRAM-SHA-256 password verifiers (RFC 5802/7677), computed and checked locally so
//! that plan knows whether a role's password already matches without the password ever leaving
//! this machine, and apply sends PostgreSQL a verifier instead of the clear password.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// PostgreSQL's default iteration count (`scram_iterations`).
const ITERATIONS: u32 = 4096;

/// Whether `verifier` (pg_authid.rolpassword) accepts `password`. Anything but a well-formed
/// SCRAM-SHA-256 verifier (md5, empty, NULL) counts as "does not match", so apply resets it.
pub fn verify(verifier: &str, password: &str) -> bool {
    let Some(parsed) = parse(verifier) else {
        return false;
    };
    let (stored_key, server_key) = keys(password, &parsed.salt, parsed.iterations);
    // Not constant-time: both sides are on this machine, there is no oracle to time.
    stored_key == parsed.stored_key && server_key == parsed.server_key
}

/// A fresh verifier for `password` with a random salt from the operating system, in pg_authid's
/// text form, suitable for `ALTER ROLE … PASSWORD '<verifier>'` (PostgreSQL stores it as is).
pub fn make_verifier(password: &str) -> Result<String, getrandom::Error> {
    let mut salt = [0_u8; 16];
    getrandom::fill(&mut salt)?;
    Ok(verifier_with_salt(password, &salt, ITERATIONS))
}

fn verifier_with_salt(password: &str, salt: &[u8], iterations: u32) -> String {
    let (stored_key, server_key) = keys(password, salt, iterations);
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

struct Parsed {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

fn parse(verifier: &str) -> Option<Parsed> {
    let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
    let (iterations_salt, keys) = rest.split_once('$')?;
    let (iterations, salt) = iterations_salt.split_once(':')?;
    let (stored_key, server_key) = keys.split_once(':')?;
    Some(Parsed {
        iterations: iterations.parse().ok().filter(|&count| count > 0)?,
        salt: STANDARD.decode(salt).ok()?,
        stored_key: STANDARD.decode(stored_key).ok()?,
        server_key: STANDARD.decode(server_key).ok()?,
    })
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// SCRAM's SaltedPassword: PBKDF2-HMAC-SHA-256, one 32-byte block.
fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, iterations)
}

fn keys(password: &str, salt: &[u8], iterations: u32) -> (Vec<u8>, Vec<u8>) {
    let salted = salted_password(password, salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key).to_vec();
    let server_key = hmac(&salted, b"Server Key").to_vec();
    (stored_key, server_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_verifier_accepts_its_password_only() {
        let verifier = make_verifier("s3cret").expect("random salt");
        assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
        assert!(verify(&verifier, "s3cret"));
        assert!(!verify(&verifier, "s3cret2"));
        assert!(!verify("md5abcdef", "s3cret"));
        assert!(!verify("", "s3cret"));
    }

    #[test]
    fn the_salted_password_is_rfc_7677s() {
        // RFC 7677, section 3: user "user", password "pencil", salt "W22ZaJ0SNY7soEsUEjb6gQ==",
        // 4096 iterations, and the ServerSignature it leads to.
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let salted = salted_password("pencil", &salt, 4096);
        let server_key = hmac(&salted, b"Server Key");
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
            r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
            c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let signature = hmac(&server_key, auth_message.as_bytes());
        assert_eq!(
            STANDARD.encode(signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }
}
