//! Resource quantities (`500m`, `64Mi`, `1.5`, `1e6`) as numbers, as the scheduler and the
//! wasmlet need them.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity in bytes (`64Mi`, `1G`, `1e6`, `500k`).
pub fn bytes(q: &Quantity) -> Option<u64> {
    let (n, scale) = parse_quantity(&q.0)?;
    whole(n * scale)
}

/// `v` rounded up to a whole number, as Kubernetes rounds, ignoring the float error of a
/// decimal scale (`250000000n` is 250m, not 251m).
fn whole(v: f64) -> Option<u64> {
    let near = v.round();
    let v = if (v - near).abs() < 1e-6 {
        near
    } else {
        v.ceil()
    };
    (v >= 0.0).then_some(v as u64)
}

/// A CPU quantity in millicores (`500m`, `1`, `0.25`).
pub fn millicores(q: &Quantity) -> Option<u64> {
    let (n, scale) = parse_quantity(&q.0)?;
    whole(n * scale * 1000.0)
}

fn parse_quantity(s: &str) -> Option<(f64, f64)> {
    let s = s.trim();
    let split = s
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    Some((num.parse().ok()?, scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_convert_to_bytes_and_millicores() {
        assert_eq!(bytes(&Quantity("64Mi".into())), Some(64 << 20));
        assert_eq!(bytes(&Quantity("1G".into())), Some(1_000_000_000));
        assert_eq!(bytes(&Quantity("1e3".into())), Some(1000));
        assert_eq!(millicores(&Quantity("500m".into())), Some(500));
        assert_eq!(millicores(&Quantity("1.5".into())), Some(1500));
        assert_eq!(bytes(&Quantity("12 apples".into())), None);
    }
}
