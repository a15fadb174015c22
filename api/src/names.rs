//! Name formats of Kubernetes objects (`k8s.io/apimachinery/pkg/util/validation`).

/// RFC 1123 label: lowercase alphanumerics and `-`, at most 63, alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// RFC 1035 label: an RFC 1123 label starting with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_should_follow_rfc_1123_and_1035() {
        assert!(is_dns1123_subdomain("web-0.example"));
        assert!(!is_dns1123_subdomain("Web"));
        assert!(is_dns1123_label("0abc"));
        assert!(!is_dns1035_label("0abc"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
    }
}
