//! Values from the config that land unquoted in formats without a quoting rule we can rely
//! on (Caddyfile tokens, mosquitto.conf words, comment lines) are checked before rendering, so
//! a stray space or brace is reported against its field instead of breaking a service's
//! config in a way its own parser explains badly.

use super::RenderError;

/// A single bare word: no whitespace, no control characters, nothing Caddy or Mosquitto
/// treat as syntax (braces, quotes, comment marks, backslashes).
pub(crate) fn word<'a>(field: &str, value: &'a str) -> Result<&'a str, RenderError> {
    let bad = value
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "{}\"'#`\\".contains(*c));
    match (value.is_empty(), bad) {
        (true, _) => Err(RenderError::UnsafeValue {
            field: field.to_string(),
            value: value.to_string(),
            why: "it is empty".to_string(),
        }),
        (false, Some(c)) => Err(RenderError::UnsafeValue {
            field: field.to_string(),
            value: value.escape_debug().to_string(),
            why: format!(
                "it contains {:?}; use a single word without spaces, quotes, braces or #",
                c
            ),
        }),
        (false, None) => Ok(value),
    }
}

/// Instance names become host names (`<name>.incus`) and appear in comments: Incus' own rule.
pub(crate) fn instance_name(name: &str) -> Result<&str, RenderError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(name)
    } else {
        Err(RenderError::UnsafeValue {
            field: format!("instances.{}", name.escape_debug()),
            value: name.escape_debug().to_string(),
            why: "instance names are host names: letters, digits and `-`, starting with a letter, at most 63 characters"
                .to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        assert!(word("f", "grafana.example.org").is_ok());
        assert!(word("f", "/api/login").is_ok());
        let e = word("instances.grafana01.web.domain", "a b")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "instances.grafana01.web.domain = \"a b\" cannot be used: it contains ' '; use a single word without spaces, quotes, braces or #"
        );
        assert!(word("f", "x}").is_err());
        assert!(word("f", "").unwrap_err().to_string().contains("empty"));
        assert!(word("f", "a\nb").unwrap_err().to_string().contains("a\\nb"));
    }

    #[test]
    fn instance_names() {
        assert!(instance_name("step-ca01").is_ok());
        assert!(instance_name("Grafana02").is_ok());
        for bad in ["", "-a", "a-", "1abc", "a_b", "a\nb", &"a".repeat(64)] {
            assert!(instance_name(bad).is_err(), "{bad:?}");
        }
    }
}
