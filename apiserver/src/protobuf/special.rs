//! The few messages whose JSON form is not "an object with the message's fields": times,
//! durations, quantities, int-or-strings, embedded raw JSON, and the wrappers Go's protobuf
//! generator needs for lists inside maps.

use prost_reflect::MessageDescriptor;

/// A message with its own JSON form, recognized by full name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Special {
    /// `meta.v1.Time`: RFC 3339 at second precision.
    Time,
    /// `meta.v1.MicroTime`: RFC 3339 with six fractional digits.
    MicroTime,
    /// `meta.v1.Duration`: Go's duration string (`1h2m3s`).
    Duration,
    /// `resource.Quantity` (and `QuantityValue`): its canonical string.
    Quantity,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// `runtime.RawExtension`, `meta.v1.FieldsV1`, apiextensions `JSON`: embedded JSON bytes
    /// (named by `raw_field`).
    Raw,
    /// `meta.v1.Verbs` and the `ExtraValue`s of user info: a list of strings.
    Items,
    /// apiextensions `JSONSchemaPropsOrBool`: a schema, or a boolean.
    OrBool,
    /// apiextensions `JSONSchemaPropsOrArray`: a schema, or a list of schemas.
    OrArray,
    /// apiextensions `JSONSchemaPropsOrStringArray`: a schema, or a list of strings.
    OrStringArray,
}

const META: &str = "apimachinery.pkg.apis.meta.v1.";
const EXTENSIONS: &str = "apiextensions_apiserver.pkg.apis.apiextensions.v1.";

impl Special {
    pub(super) fn of(desc: &MessageDescriptor) -> Option<Special> {
        // Upstream packages start `k8s.io.`; the embedded schema's do not.
        let full = desc.full_name().trim_start_matches("k8s.io.");
        if let Some(name) = full.strip_prefix(META) {
            return match name {
                "Time" => Some(Special::Time),
                "MicroTime" => Some(Special::MicroTime),
                "Duration" => Some(Special::Duration),
                "FieldsV1" => Some(Special::Raw),
                "Verbs" => Some(Special::Items),
                _ => None,
            };
        }
        if let Some(name) = full.strip_prefix(EXTENSIONS) {
            return match name {
                "JSON" => Some(Special::Raw),
                "JSONSchemaPropsOrBool" => Some(Special::OrBool),
                "JSONSchemaPropsOrArray" => Some(Special::OrArray),
                "JSONSchemaPropsOrStringArray" => Some(Special::OrStringArray),
                _ => None,
            };
        }
        match full {
            "apimachinery.pkg.api.resource.Quantity"
            | "apimachinery.pkg.api.resource.QuantityValue" => Some(Special::Quantity),
            "apimachinery.pkg.util.intstr.IntOrString" => Some(Special::IntOrString),
            "apimachinery.pkg.runtime.RawExtension" => Some(Special::Raw),
            _ if desc.name() == "ExtraValue" => Some(Special::Items),
            _ => None,
        }
    }
}

/// Fields whose protobuf name is not their JSON name: (message, proto, JSON). Kubernetes'
/// protobuf names are the JSON names, except where that is not an identifier (JSON schema's
/// `$ref`, `x-kubernetes-*`) or the generator took the Go name.
const RENAMED: &[(&str, &str, &str)] = &[
    ("IngressClassParametersReference", "aPIGroup", "apiGroup"),
    ("BoundObjectReference", "uID", "uid"),
    ("JSONSchemaProps", "schema", "$schema"),
    ("JSONSchemaProps", "ref", "$ref"),
    (
        "JSONSchemaProps",
        "xKubernetesPreserveUnknownFields",
        "x-kubernetes-preserve-unknown-fields",
    ),
    (
        "JSONSchemaProps",
        "xKubernetesEmbeddedResource",
        "x-kubernetes-embedded-resource",
    ),
    (
        "JSONSchemaProps",
        "xKubernetesIntOrString",
        "x-kubernetes-int-or-string",
    ),
    (
        "JSONSchemaProps",
        "xKubernetesListMapKeys",
        "x-kubernetes-list-map-keys",
    ),
    (
        "JSONSchemaProps",
        "xKubernetesListType",
        "x-kubernetes-list-type",
    ),
    (
        "JSONSchemaProps",
        "xKubernetesMapType",
        "x-kubernetes-map-type",
    ),
    (
        "JSONSchemaProps",
        "xKubernetesValidations",
        "x-kubernetes-validations",
    ),
];

/// The JSON name of a protobuf field.
pub(super) fn json_name<'a>(message: &MessageDescriptor, proto: &'a str) -> &'a str {
    RENAMED
        .iter()
        .find(|(m, p, _)| *m == message.name() && *p == proto)
        .map_or(proto, |(_, _, json)| json)
}

/// The protobuf field name of a JSON key (the inverse of [`json_name`]).
pub(super) fn proto_name<'a>(message: &MessageDescriptor, json: &'a str) -> &'a str {
    RENAMED
        .iter()
        .find(|(m, _, j)| *m == message.name() && *j == json)
        .map_or(json, |(_, proto, _)| proto)
}

/// Go's zero `time.Time` (year 1), which client-go sends for unset non-pointer times.
const GO_ZERO_SECONDS: i64 = -62_135_596_800;

/// A `Time`/`MicroTime` in its JSON form; `None` for Go's zero time (left out, as `omitempty`).
pub(super) fn format_time(seconds: i64, nanos: i32, micro: bool) -> Option<String> {
    if seconds == GO_ZERO_SECONDS && nanos == 0 {
        return None;
    }
    let ts = jiff::Timestamp::new(seconds, if micro { nanos } else { 0 }).ok()?;
    Some(if micro {
        ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    } else {
        ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    })
}

/// Parses an RFC 3339 time into seconds and nanoseconds.
pub(super) fn parse_time(text: &str) -> Option<(i64, i32)> {
    let ts: jiff::Timestamp = text.parse().ok()?;
    Some((ts.as_second(), ts.subsec_nanosecond()))
}

const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Go's `time.Duration.String`.
pub(super) fn format_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let u = ns.unsigned_abs();
    let frac = |v: u64, div: u64| {
        let (whole, part) = (v / div, v % div);
        if part == 0 {
            return whole.to_string();
        }
        let width = div.ilog10() as usize;
        let digits = format!("{part:0width$}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    };
    let body = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        format!("{}µs", frac(u, 1_000))
    } else if u < 1_000_000_000 {
        format!("{}ms", frac(u, 1_000_000))
    } else {
        let (h, rest) = (u / 3_600_000_000_000, u % 3_600_000_000_000);
        let (m, s) = (rest / 60_000_000_000, rest % 60_000_000_000);
        let mut out = String::new();
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if h > 0 || m > 0 {
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&format!("{}s", frac(s, 1_000_000_000)));
        out
    };
    format!("{sign}{body}")
}

/// Go's `time.ParseDuration`: `[-+]` then number-unit pairs (`1h30m`, `1.5s`, `300ms`), or `0`.
pub(super) fn parse_duration(text: &str) -> Option<i64> {
    let (neg, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_end);
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        if whole.is_empty() && frac.is_empty() {
            return None;
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let scale = UNITS.iter().find(|(u, _)| *u == unit)?.1;
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut part: u128 = 0;
        let mut div: u128 = 1;
        for d in frac.bytes().take(18) {
            part = part * 10 + u128::from(d - b'0');
            div *= 10;
        }
        total = total.checked_add(whole.checked_mul(scale)? + part * scale / div)?;
        rest = next;
    }
    let total = i64::try_from(total).ok()?;
    Some(if neg { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_should_read_and_print_as_go_does() {
        for (ns, text) in [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (300_000_000, "300ms"),
            (1_500_000_000, "1.5s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (-5_000_000_000, "-5s"),
        ] {
            assert_eq!(format_duration(ns), text);
            assert_eq!(parse_duration(text), Some(ns), "{text}");
        }
        assert_eq!(parse_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("2us"), Some(2_000));
        for bad in ["", "1", "s", "1x", "--1s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn times_should_print_as_kubernetes_json_and_leave_out_go_zero() {
        assert_eq!(
            format_time(1_700_000_000, 5, false).as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(
            format_time(1_700_000_000, 123_000, true).as_deref(),
            Some("2023-11-14T22:13:20.000123Z")
        );
        assert_eq!(format_time(GO_ZERO_SECONDS, 0, false), None);
        assert_eq!(
            parse_time("2023-11-14T22:13:20.000123Z"),
            Some((1_700_000_000, 123_000))
        );
    }
}
