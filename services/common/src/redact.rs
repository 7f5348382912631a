//! Hiding the password of a connection URL, so that URLs can be logged and shown in errors.

/// `url` with the password of its userinfo replaced by `***`, safe for logs.
///
/// The userinfo ends at the last `@` before the first `/`, `?` or `#` after the scheme, as in
/// RFC 3986, so a password holding a percent-encoded `@` is hidden whole. A text with no
/// `scheme://`, or with no password, has nothing to hide and is returned unchanged.
pub fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..scheme_end],
        &authority[..colon],
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_replaced_and_the_rest_kept() {
        assert_eq!(
            redact_url_password("amqp://guest:s3cr%40t@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url_password("postgres://billing:pw@[fd00::13]:5432/billing_db?sslmode=disable"),
            "postgres://billing:***@[fd00::13]:5432/billing_db?sslmode=disable"
        );
        // An unencoded '@' in the password: everything up to the last one is userinfo.
        assert_eq!(
            redact_url_password("amqp://u:p@ss@host/vh"),
            "amqp://u:***@host/vh"
        );
    }

    #[test]
    fn urls_without_password_are_shown_as_is() {
        for raw in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://127.0.0.1/db?user=a",
            "amqp://host/vh@x",
            "not a url",
        ] {
            assert_eq!(redact_url_password(raw), raw);
        }
    }
}
