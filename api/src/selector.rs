//! Label selectors in the string form of `?labelSelector=` (equality- and set-based), parsed
//! and matched as Kubernetes' `labels.Parse` does.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key` — the label exists.
    Exists(String),
    /// `!key` — the label does not exist.
    DoesNotExist(String),
    /// `key=v`, `key==v`, `key in (a,b)`.
    In(String, Vec<String>),
    /// `key!=v`, `key notin (a,b)` — also true when the label is absent.
    NotIn(String, Vec<String>),
    /// `key>n` — the label is an integer greater than n.
    Gt(String, i64),
    /// `key<n` — the label is an integer less than n.
    Lt(String, i64),
}

/// A parsed label selector: all requirements must hold. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// The requirements, in the order given.
    pub requirements: Vec<Requirement>,
}

/// A selector that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Gt(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Requirement::Lt(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        }
    }
}

impl LabelSelector {
    /// Whether the labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Builds a selector from the structured `metav1.LabelSelector` form.
    ///
    /// # Errors
    /// An unknown operator, or values where none are allowed.
    pub fn from_structured(
        sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    ) -> Result<LabelSelector, SelectorError> {
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement::In(k.clone(), vec![v.clone()]));
        }
        for expr in sel.match_expressions.iter().flatten() {
            let values = expr.values.clone().unwrap_or_default();
            let key = expr.key.clone();
            requirements.push(match expr.operator.as_str() {
                "In" if !values.is_empty() => Requirement::In(key, values),
                "NotIn" if !values.is_empty() => Requirement::NotIn(key, values),
                "Exists" if values.is_empty() => Requirement::Exists(key),
                "DoesNotExist" if values.is_empty() => Requirement::DoesNotExist(key),
                op => {
                    return Err(SelectorError(format!(
                        "{op:?} is not a valid label selector operator for key {key:?}"
                    )));
                }
            });
        }
        Ok(LabelSelector { requirements })
    }
}

/// Validates a label key: an optional DNS-subdomain prefix and a name of up to 63 characters.
pub fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && crate::names::is_dns1123_subdomain(p))
        && valid_label_value(name)
        && !name.is_empty()
}

/// Validates a label value: empty, or up to 63 alphanumerics, `-`, `_`, `.`, starting and
/// ending with an alphanumeric.
pub fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_values(s: &str, whole: &str) -> Result<Vec<String>, SelectorError> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| SelectorError(format!("{whole}: expected a parenthesized value list")))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    for v in &values {
        if !valid_label_value(v) {
            return Err(SelectorError(format!(
                "{whole}: invalid label value: {v:?}"
            )));
        }
    }
    Ok(values)
}

fn parse_requirement(raw: &str) -> Result<Requirement, SelectorError> {
    let r = raw.trim();
    let bad = || SelectorError(r.to_string());
    let key_ok = |k: &str| -> Result<String, SelectorError> {
        let k = k.trim();
        if valid_label_key(k) {
            Ok(k.to_string())
        } else {
            Err(SelectorError(format!("{r}: invalid label key {k:?}")))
        }
    };
    if let Some(k) = r.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key_ok(k)?));
    }
    for (op, is_not) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = r.split_once(op) {
            let v = v.trim();
            if !valid_label_value(v) {
                return Err(SelectorError(format!("{r}: invalid label value: {v:?}")));
            }
            let key = key_ok(k)?;
            return Ok(if is_not {
                Requirement::NotIn(key, vec![v.to_string()])
            } else {
                Requirement::In(key, vec![v.to_string()])
            });
        }
    }
    for (op, gt) in [(">", true), ("<", false)] {
        if let Some((k, v)) = r.split_once(op) {
            let n: i64 = v.trim().parse().map_err(|_| bad())?;
            let key = key_ok(k)?;
            return Ok(if gt {
                Requirement::Gt(key, n)
            } else {
                Requirement::Lt(key, n)
            });
        }
    }
    let mut words = r.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    match words.next().map(str::trim_start) {
        None => Ok(Requirement::Exists(key_ok(key)?)),
        Some(rest) => {
            if let Some(list) = rest.strip_prefix("notin") {
                Ok(Requirement::NotIn(key_ok(key)?, parse_values(list, r)?))
            } else if let Some(list) = rest.strip_prefix("in") {
                Ok(Requirement::In(key_ok(key)?, parse_values(list, r)?))
            } else {
                Err(bad())
            }
        }
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(LabelSelector::default());
        }
        let requirements = split_top_level(s)
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<_, _>>()?;
        Ok(LabelSelector { requirements })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
                Requirement::In(k, v) if v.len() == 1 => format!("{k}={}", v[0]),
                Requirement::In(k, v) => format!("{k} in ({})", v.join(",")),
                Requirement::NotIn(k, v) if v.len() == 1 => format!("{k}!={}", v[0]),
                Requirement::NotIn(k, v) => format!("{k} notin ({})", v.join(",")),
                Requirement::Gt(k, n) => format!("{k}>{n}"),
                Requirement::Lt(k, n) => format!("{k}<{n}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equality_and_set_forms_should_match_like_kubernetes() {
        let l = labels(&[("app", "web"), ("tier", "frontend"), ("n", "7")]);
        for (sel, want) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("tier in (frontend, backend)", true),
            ("tier notin (frontend)", false),
            ("missing notin (a)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=web,tier in (backend)", false),
            ("n>5", true),
            ("n<5", false),
            ("example.com/role=x", false),
        ] {
            let parsed: LabelSelector = sel.parse().unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(parsed.matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn malformed_selectors_should_be_rejected() {
        for sel in [
            "app=we b",
            "tier in frontend",
            "=x",
            "a b c",
            "n>x",
            "Bad Key=1",
        ] {
            assert!(
                sel.parse::<LabelSelector>().is_err(),
                "{sel} should not parse"
            );
        }
    }

    #[test]
    fn display_should_round_trip() {
        let s: LabelSelector = "a=b,c in (d,e),!f,g".parse().expect("parse");
        assert_eq!(s.to_string().parse::<LabelSelector>().expect("reparse"), s);
    }
}
