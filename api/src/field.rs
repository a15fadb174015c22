//! Field selectors (`?fieldSelector=`): `path=value`, `path==value`, `path!=value`, joined by
//! commas, over the fields each kind supports, as Kubernetes' `fields.ParseSelector` does.

use std::str::FromStr;

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Dotted field path, e.g. `spec.nodeName`.
    pub path: String,
    /// Expected value.
    pub value: String,
    /// `!=` instead of `=`.
    pub negated: bool,
}

/// A parsed field selector: all terms must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// The terms.
    pub requirements: Vec<FieldRequirement>,
}

/// A field selector that could not be parsed or names an unsupported field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldSelectorError {
    /// The text is not `path=value` terms.
    #[error("invalid selector: '{0}'; can't understand '{1}'")]
    Syntax(String, String),
    /// The kind does not index this field.
    #[error("field label not supported: {0}")]
    Unsupported(String),
}

/// Splits on unescaped `sep`, keeping escapes for [`unescape`].
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if !escaped && c == '\\' {
            escaped = true;
        } else {
            out.push(c);
            escaped = false;
        }
    }
    out
}

impl FromStr for FieldSelector {
    type Err = FieldSelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector { requirements });
        }
        for term in split_unescaped(s, ',') {
            let (path, value, negated) = if let Some((p, v)) = term.split_once("!=") {
                (p, v, true)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, v, false)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, v, false)
            } else {
                return Err(FieldSelectorError::Syntax(s.to_string(), term));
            };
            if path.trim().is_empty() {
                return Err(FieldSelectorError::Syntax(s.to_string(), term.clone()));
            }
            requirements.push(FieldRequirement {
                path: path.trim().to_string(),
                value: unescape(value),
                negated,
            });
        }
        Ok(FieldSelector { requirements })
    }
}

/// The string form of a JSON field as field selectors compare it (absent = empty string).
fn field_string(obj: &serde_json::Value, path: &str) -> String {
    let mut cur = obj;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl FieldSelector {
    /// Checks that every path is one of `supported` (plus `metadata.name` and
    /// `metadata.namespace`, which every kind supports).
    ///
    /// # Errors
    /// [`FieldSelectorError::Unsupported`] naming the first unsupported path.
    pub fn check(&self, supported: &[&str]) -> Result<(), FieldSelectorError> {
        for r in &self.requirements {
            let ok = matches!(r.path.as_str(), "metadata.name" | "metadata.namespace")
                || supported.contains(&r.path.as_str());
            if !ok {
                return Err(FieldSelectorError::Unsupported(r.path.clone()));
            }
        }
        Ok(())
    }

    /// Whether the object satisfies every term.
    pub fn matches(&self, obj: &serde_json::Value) -> bool {
        self.requirements
            .iter()
            .all(|r| (field_string(obj, &r.path) == r.value) != r.negated)
    }

    /// Whether fields read by `get` (absent = empty) satisfy every term: for objects whose
    /// selectable fields were extracted ahead of time.
    pub fn matches_fields<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements
            .iter()
            .all(|r| (get(&r.path).unwrap_or_default() == r.value) != r.negated)
    }

    /// The string form of the field at `path` of `obj`, as [`FieldSelector::matches`]
    /// compares it (absent = empty).
    pub fn field_value(obj: &serde_json::Value, path: &str) -> String {
        field_string(obj, path)
    }

    /// Whether the selector has no terms.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value required for `path` by an equality term, if any (used to narrow a list).
    pub fn required(&self, path: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.path == path && !r.negated)
            .map(|r| r.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn terms_should_match_fields_and_missing_fields_as_empty() {
        let pod = json!({"metadata": {"name": "a"}, "spec": {"nodeName": "n1", "hostNetwork": true},
                         "status": {"phase": "Running"}});
        for (sel, want) in [
            ("spec.nodeName=n1", true),
            ("spec.nodeName==n1,status.phase!=Pending", true),
            ("spec.nodeName=", false),
            ("status.podIP=", true),
            ("spec.hostNetwork=true", true),
            ("metadata.name!=a", false),
        ] {
            let s: FieldSelector = sel.parse().expect("parse");
            assert_eq!(s.matches(&pod), want, "{sel}");
        }
    }

    #[test]
    fn unsupported_fields_and_bad_syntax_should_be_rejected() {
        let s: FieldSelector = "spec.foo=1".parse().expect("parse");
        assert_eq!(
            s.check(&["spec.nodeName"]),
            Err(FieldSelectorError::Unsupported("spec.foo".into()))
        );
        assert!("justtext".parse::<FieldSelector>().is_err());
        let escaped: FieldSelector = r"metadata.name=a\,b".parse().expect("parse");
        assert_eq!(escaped.requirements[0].value, "a,b");
    }
}
