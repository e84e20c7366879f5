//! Kubernetes resource quantities (`500m`, `2Gi`, `1e3`) parsed for comparison against caps.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity in billionths of its unit (nano-cores, nano-bytes): exact for every suffix.
pub type Nanos = i128;

const NANO: i128 = 1_000_000_000;

/// Parses a quantity, or `None` when it is not one the API server would accept.
pub fn parse(q: &str) -> Option<Nanos> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let (sign, num) = match num.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, num.strip_prefix('+').unwrap_or(num)),
    };
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    if (int_part.is_empty() && frac_part.is_empty())
        || !(int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    // value = digits / 10^frac_len, in nanos.
    let digits: i128 = format!("{int_part}{frac_part}")
        .parse()
        .ok()
        .filter(|_| int_part.len() + frac_part.len() <= 30)?;
    let (mul, div): (i128, i128) = match suffix {
        "" => (NANO, 1),
        "n" => (1, 1),
        "u" => (1_000, 1),
        "m" => (1_000_000, 1),
        "k" => (NANO * 1_000, 1),
        "M" => (NANO * 1_000_000, 1),
        "G" => (NANO * 1_000_000_000, 1),
        "T" => (NANO * 1_000_000_000_000, 1),
        "P" => (NANO * 1_000_000_000_000_000, 1),
        "E" => (NANO * 1_000_000_000_000_000_000, 1),
        "Ki" => (NANO << 10, 1),
        "Mi" => (NANO << 20, 1),
        "Gi" => (NANO << 30, 1),
        "Ti" => (NANO << 40, 1),
        "Pi" => (NANO << 50, 1),
        "Ei" => (NANO << 60, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().ok()?;
            if !(-9..=18).contains(&exp) {
                return None;
            }
            if exp >= 0 {
                (NANO * 10i128.pow(exp as u32), 1)
            } else {
                (NANO, 10i128.pow((-exp) as u32))
            }
        }
        _ => return None,
    };
    let scaled = digits.checked_mul(mul)? / div / 10i128.checked_pow(frac_part.len() as u32)?;
    Some(sign * scaled)
}

/// Parses a Kubernetes `Quantity`.
pub fn nanos(q: &Quantity) -> Option<Nanos> {
    parse(&q.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse("500m"), Some(NANO / 2));
        assert_eq!(parse("2"), Some(2 * NANO));
        assert_eq!(parse("1Gi"), Some(NANO << 30));
        assert_eq!(parse("1.5Gi"), Some((NANO << 30) * 3 / 2));
        assert_eq!(parse("1e3"), Some(1000 * NANO));
        assert_eq!(parse("1k"), parse("1e3"));
        assert!(parse("1Gi").unwrap() > parse("1G").unwrap());
        for bad in ["", "Gi", "1GB", "1..2", "abc", "1 Gi", "--1"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
