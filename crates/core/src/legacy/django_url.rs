//! Whether the legacy insert API accepts a callback's `url`, and with which messages it refuses
//! one, so that our legacy-compatible endpoint answers exactly as `flux-callme-service` did.
//!
//! The legacy field is a Django `models.URLField(max_length=2048)` behind a DRF
//! `ModelSerializer`, which makes it a DRF `URLField` (Django 5.2, DRF 3.18, Python 3.11):
//! 1. the value is trimmed with Python's `str.strip()`, whose whitespace includes U+001C..U+001F
//!    and U+0085; if nothing is left the only answer is "This field may not be blank.";
//! 2. then every validator runs and each failure adds its message, in this order: more than 2048
//!    characters (code points, not bytes), a NUL anywhere, Django's `URLValidator`. DRF's
//!    surrogate check sits before the last, but a Rust string cannot hold a lone surrogate.
//!
//! `URLValidator` is a regex with checks around it, all giving "Enter a valid URL.":
//! - at most 2048 characters, no tab, CR or LF anywhere;
//! - the text before the first `://` is `http`, `https`, `ftp` or `ftps` in any case;
//! - Python's `urlsplit` must not raise: it refuses a netloc with one bracket but not the other,
//!   a bracketed part that is not an IPv6 address or `v<hex>.<anything>`, and a non-ASCII netloc
//!   with a character that NFKC turns into one of `/?#@:` (such as U+FF0F or U+2100);
//! - the regex: `scheme://[user[:pass]@]host[:port][/?#rest]` where host is a dotted IPv4
//!   address without leading zeros, `[` hex digits, colons and dots `]`, `localhost`, or labels
//!   of at most 63 characters (letters, digits, `-` and every BMP character from U+00A1 up;
//!   no label starts or ends with `-`) ending in a TLD of letters (2 to 63) or `xn--` with 1 to
//!   59 letters or digits, and an optional trailing dot. `rest` may be anything but whitespace;
//! - a netloc of the form `[...]` or `[...]:port` must hold a valid IPv6 address (39 characters
//!   at most);
//! - the host name `urlsplit` finds is not empty and, lowercased, at most 253 characters.
//!
//! The regex needs lookarounds and backtracking, so it is matched by hand: each part yields the
//! set of positions where it can end, which is what a backtracking engine would explore.
//! Django 5.2 no longer retries a failed match with the host converted to punycode: unicode
//! host names are matched as they are.
//!
//! `django_url_vectors.json` holds the legacy code's own answers (made by
//! `scripts/django_url_vectors.py`); the tests below check every one.

const MAX_LENGTH: usize = 2048;
const BLANK: &str = "This field may not be blank.";
const TOO_LONG: &str = "Ensure this field has no more than 2048 characters.";
const NULL_CHARACTERS: &str = "Null characters are not allowed.";
const INVALID: &str = "Enter a valid URL.";

/// What the legacy API does with the `url` string a caller sent: the trimmed value it would
/// store, or the DRF error messages (in DRF's order) for the `url` field.
pub fn validate(raw: &str) -> Result<String, Vec<String>> {
    let value = raw.trim_matches(is_python_space);
    if value.is_empty() {
        return Err(vec![BLANK.to_owned()]);
    }
    let chars: Vec<char> = value.chars().collect();
    let mut errors = Vec::new();
    if chars.len() > MAX_LENGTH {
        errors.push(TOO_LONG.to_owned());
    }
    if chars.contains(&'\0') {
        errors.push(NULL_CHARACTERS.to_owned());
    }
    if !url_validator_accepts(&chars) {
        errors.push(INVALID.to_owned());
    }
    if errors.is_empty() {
        Ok(value.to_owned())
    } else {
        Err(errors)
    }
}

/// Django's `URLValidator()(value)` with its default schemes.
fn url_validator_accepts(s: &[char]) -> bool {
    if s.len() > MAX_LENGTH || s.iter().any(|c| matches!(c, '\t' | '\r' | '\n')) {
        return false;
    }
    // `value.split("://")[0].lower() in schemes`; no non-ASCII character lowercases into these.
    let Some(sep) = find(s, &[':', '/', '/']) else {
        return false;
    };
    let scheme: String = s[..sep].iter().collect();
    if !["http", "https", "ftp", "ftps"]
        .iter()
        .any(|known| scheme.eq_ignore_ascii_case(known))
    {
        return false;
    }
    // The scheme is letters only, so `urlsplit` takes it and the netloc runs from after `://` to
    // the first of `/?#`.
    let after = sep + 3;
    let netloc_end = s[after..]
        .iter()
        .position(|c| matches!(c, '/' | '?' | '#'))
        .map_or(s.len(), |i| after + i);
    let netloc = &s[after..netloc_end];
    urlsplit_accepts(netloc)
        && regex_matches(s, after)
        && bracketed_netloc_is_ipv6(netloc)
        && hostname_fits(netloc)
}

/// Python's `str.isspace()`, which is also what `\s` matches in a `str` regex.
fn is_python_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\u{1c}'..='\u{1f}'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

fn find(s: &[char], needle: &[char]) -> Option<usize> {
    s.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// urllib.parse.urlsplit (Python 3.11): the parts that can raise ValueError.

/// The characters whose NFKC form contains one of `/?#@:` (Unicode 14, as Python 3.11 has it).
/// `urlsplit` refuses a non-ASCII netloc holding any of them. Composition cannot create or absorb
/// those ASCII characters, so testing characters one by one gives the same answer as normalizing
/// the whole netloc.
const NFKC_DELIMITERS: [char; 19] = [
    '\u{2047}', '\u{2048}', '\u{2049}', '\u{2100}', '\u{2101}', '\u{2105}', '\u{2106}', '\u{2a74}',
    '\u{fe13}', '\u{fe16}', '\u{fe55}', '\u{fe56}', '\u{fe5f}', '\u{fe6b}', '\u{ff03}', '\u{ff0f}',
    '\u{ff1a}', '\u{ff1f}', '\u{ff20}',
];

fn urlsplit_accepts(netloc: &[char]) -> bool {
    let open = netloc.iter().position(|&c| c == '[');
    let has_close = netloc.contains(&']');
    match (open, has_close) {
        (Some(_), false) | (None, true) => return false,
        (Some(open), true) => {
            let rest = &netloc[open + 1..];
            let end = rest.iter().position(|&c| c == ']').unwrap_or(rest.len());
            let host: String = rest[..end].iter().collect();
            if !bracketed_host_ok(&host) {
                return false;
            }
        }
        (None, false) => {}
    }
    !netloc.iter().any(|c| NFKC_DELIMITERS.contains(c))
}

/// `urllib.parse._check_bracketed_host`: `v<hex>.<something>` (IPvFuture) or an IPv6 address.
fn bracketed_host_ok(host: &str) -> bool {
    if let Some(rest) = host.strip_prefix('v') {
        let hex = rest.bytes().take_while(u8::is_ascii_hexdigit).count();
        return hex > 0 && rest[hex..].strip_prefix('.').is_some_and(|r| !r.is_empty());
    }
    !python_ipv4(host) && python_ipv6(host)
}

// ---------------------------------------------------------------------------------------------
// Python's ipaddress module, as far as validity goes.

fn python_ipv4(s: &str) -> bool {
    let octets: Vec<&str> = s.split('.').collect();
    octets.len() == 4
        && octets.iter().all(|o| {
            !o.is_empty()
                && o.len() <= 3
                && o.bytes().all(|b| b.is_ascii_digit())
                && (*o == "0" || !o.starts_with('0'))
                && o.parse::<u16>().is_ok_and(|v| v <= 255)
        })
}

/// `ipaddress.IPv6Address(s)` does not raise (a `%zone` suffix included).
fn python_ipv6(s: &str) -> bool {
    if s.contains('/') {
        return false;
    }
    let addr = match s.split_once('%') {
        None => s,
        Some((_, zone)) if zone.is_empty() || zone.contains('%') => return false,
        Some((addr, _)) => addr,
    };
    if addr.is_empty() {
        return false;
    }
    let mut parts: Vec<&str> = addr.split(':').collect();
    if parts.len() < 3 {
        return false;
    }
    if let Some(last) = parts.last().copied().filter(|p| p.contains('.')) {
        if !python_ipv4(last) {
            return false;
        }
        // The IPv4 suffix stands for two hextets; only their count matters here.
        parts.pop();
        parts.extend(["0", "0"]);
    }
    if parts.len() > 9 {
        return false;
    }
    let n = parts.len();
    let mut skip = None;
    for (i, part) in parts.iter().enumerate().take(n - 1).skip(1) {
        if part.is_empty() {
            if skip.is_some() {
                return false;
            }
            skip = Some(i);
        }
    }
    let (hi, lo) = match skip {
        Some(skip) => {
            let mut hi = skip;
            let mut lo = n - skip - 1;
            if parts[0].is_empty() {
                hi -= 1;
                if hi != 0 {
                    return false;
                }
            }
            if parts[n - 1].is_empty() {
                lo -= 1;
                if lo != 0 {
                    return false;
                }
            }
            if hi + lo >= 8 {
                return false;
            }
            (hi, lo)
        }
        None => {
            if n != 8 || parts[0].is_empty() || parts[n - 1].is_empty() {
                return false;
            }
            (n, 0)
        }
    };
    let hextet =
        |p: &&str| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_hexdigit());
    parts[..hi].iter().all(hextet) && parts[n - lo..].iter().all(hextet)
}

/// Django's `validate_ipv6_address`: Python's parser, after a length check.
fn django_ipv6(s: &[char]) -> bool {
    s.len() <= 39 && python_ipv6(&s.iter().collect::<String>())
}

// ---------------------------------------------------------------------------------------------
// The URLValidator regex (IGNORECASE), from just after `://`.

/// `[a-z\u00a1-\uffff0-9]`: ASCII letters and digits, and the whole BMP from U+00A1.
fn is_label_end(c: char) -> bool {
    c.is_ascii_alphanumeric() || ('\u{a1}'..='\u{ffff}').contains(&c)
}

/// `[a-z\u00a1-\uffff0-9-]`.
fn is_label_char(c: char) -> bool {
    c == '-' || is_label_end(c)
}

/// `[a-z\u00a1-\uffff-]`: a TLD has no ASCII digits.
fn is_tld_char(c: char) -> bool {
    c == '-' || c.is_ascii_alphabetic() || ('\u{a1}'..='\u{ffff}').contains(&c)
}

/// `[a-z0-9]` under IGNORECASE: Python also folds U+0130, U+0131, U+017F and U+212A into it.
fn is_punycode_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '\u{130}' | '\u{131}' | '\u{17f}' | '\u{212a}')
}

/// A literal letter under IGNORECASE; of the letters used here only `s` has a non-ASCII
/// variant (U+017F, long s).
fn literal_matches(c: char, letter: char) -> bool {
    c.to_ascii_lowercase() == letter || (letter == 's' && c == '\u{17f}')
}

fn literal_at(s: &[char], at: usize, word: &str) -> bool {
    let len = word.chars().count();
    at + len <= s.len()
        && s[at..at + len]
            .iter()
            .zip(word.chars())
            .all(|(&c, l)| literal_matches(c, l))
}

/// Length of the run of characters from `at` that satisfy `class`.
fn run(s: &[char], at: usize, class: impl Fn(char) -> bool) -> usize {
    s.get(at..)
        .map_or(0, |rest| rest.iter().take_while(|&&c| class(c)).count())
}

/// `[^\s:@/]`.
fn is_userinfo_char(c: char) -> bool {
    !is_python_space(c) && !matches!(c, ':' | '@' | '/')
}

fn regex_matches(s: &[char], after_scheme: usize) -> bool {
    let mut host_starts = vec![after_scheme];
    // `(?:[^\s:@/]+(?::[^\s:@/]*)?@)?`: neither run can hold `:` or `@`, so there is at most one
    // way to read a user part.
    let user = run(s, after_scheme, is_userinfo_char);
    if user > 0 {
        let mut at = after_scheme + user;
        if s.get(at) == Some(&':') {
            at += 1 + run(s, at + 1, is_userinfo_char);
        }
        if s.get(at) == Some(&'@') {
            host_starts.push(at + 1);
        }
    }
    host_starts.into_iter().any(|start| {
        host_ends(s, start)
            .into_iter()
            .any(|end| tail_matches(s, end))
    })
}

/// `(?::[0-9]{1,5})?(?:[/?#][^\s]*)?\Z` from `at`.
fn tail_matches(s: &[char], mut at: usize) -> bool {
    if s.get(at) == Some(&':') {
        let digits = run(s, at + 1, |c| c.is_ascii_digit());
        // Fewer digits than the run would leave a digit where `/?#` or the end must be.
        if !(1..=5).contains(&digits) {
            return false;
        }
        at += 1 + digits;
    }
    match s.get(at) {
        None => true,
        Some('/' | '?' | '#') => !s[at + 1..].iter().any(|&c| is_python_space(c)),
        Some(_) => false,
    }
}

/// Every position where the host alternative can end when it starts at `at`.
fn host_ends(s: &[char], at: usize) -> Vec<usize> {
    let mut ends = ipv4_ends(s, at);
    // `\[[0-9a-f:.]+\]`
    if s.get(at) == Some(&'[') {
        let inner = run(s, at + 1, |c| {
            c.is_ascii_hexdigit() || matches!(c, ':' | '.')
        });
        if inner > 0 && s.get(at + 1 + inner) == Some(&']') {
            ends.push(at + 2 + inner);
        }
    }
    ends.extend(domain_name_ends(s, at));
    if literal_at(s, at, "localhost") {
        ends.push(at + 9);
    }
    ends
}

/// `(?:0|25[0-5]|2[0-4][0-9]|1[0-9]?[0-9]?|[1-9][0-9]?)(?:\.(same)){3}`.
fn ipv4_ends(s: &[char], at: usize) -> Vec<usize> {
    let mut ends = octet_ends(s, at);
    for _ in 0..3 {
        ends = ends
            .into_iter()
            .filter(|&e| s.get(e) == Some(&'.'))
            .flat_map(|e| octet_ends(s, e + 1))
            .collect();
    }
    ends
}

fn octet_ends(s: &[char], at: usize) -> Vec<usize> {
    let digit = |i: usize| s.get(at + i).copied().filter(char::is_ascii_digit);
    let mut ends = Vec::new();
    match digit(0) {
        Some('0') => ends.push(at + 1),
        Some('1') => {
            ends.push(at + 1);
            if digit(1).is_some() {
                ends.push(at + 2);
                if digit(2).is_some() {
                    ends.push(at + 3);
                }
            }
        }
        Some(d) => {
            ends.push(at + 1);
            if digit(1).is_some() {
                ends.push(at + 2);
            }
            let third = digit(2).is_some();
            match (d, digit(1)) {
                ('2', Some('5')) if matches!(digit(2), Some('0'..='5')) => ends.push(at + 3),
                ('2', Some('0'..='4')) if third => ends.push(at + 3),
                _ => {}
            }
        }
        None => {}
    }
    ends
}

/// `hostname_re domain_re tld_re`: a first label, any number of `.label`, then `.tld` and an
/// optional dot.
fn domain_name_ends(s: &[char], at: usize) -> Vec<usize> {
    let n = s.len();
    // reachable[i]: the labels so far can end at i.
    let mut reachable = vec![false; n + 1];
    // `[A](?:[B]{0,61}[A])?`
    if s.get(at).copied().is_some_and(is_label_end) {
        for len in 1..=63 {
            let end = at + len;
            if end > n || !is_label_char(s[end - 1]) {
                break;
            }
            if is_label_end(s[end - 1]) {
                reachable[end] = true;
            }
        }
    }
    // `(?:\.(?!-)[B]{1,63}(?<!-))*`: every new end lies further on, so one pass closes the set.
    for dot in at..n {
        if !reachable[dot] || s[dot] != '.' || s.get(dot + 1) == Some(&'-') {
            continue;
        }
        for len in 1..=63 {
            let end = dot + 1 + len;
            if end > n || !is_label_char(s[end - 1]) {
                break;
            }
            if s[end - 1] != '-' {
                reachable[end] = true;
            }
        }
    }
    // `\.(?!-)(?:[C]{2,63}|xn--[D]{1,59})(?<!-)\.?`
    let mut ends = Vec::new();
    for dot in at..n {
        if !reachable[dot] || s[dot] != '.' || s.get(dot + 1) == Some(&'-') {
            continue;
        }
        let mut tld_ends = Vec::new();
        for len in 1..=63 {
            let end = dot + 1 + len;
            if end > n || !is_tld_char(s[end - 1]) {
                break;
            }
            if len >= 2 && s[end - 1] != '-' {
                tld_ends.push(end);
            }
        }
        if literal_at(s, dot + 1, "xn--") {
            let body = run(s, dot + 5, is_punycode_char).min(59);
            tld_ends.extend((1..=body).map(|len| dot + 5 + len));
        }
        for end in tld_ends {
            ends.push(end);
            if s.get(end) == Some(&'.') {
                ends.push(end + 1);
            }
        }
    }
    ends
}

// ---------------------------------------------------------------------------------------------
// The checks after the regex.

/// `re.search(r"^\[(.+)\](?::[0-9]{1,5})?$", netloc)`: when it matches, the group (greedy: up
/// to the last `]` that only a port follows) must be an IPv6 address.
fn bracketed_netloc_is_ipv6(netloc: &[char]) -> bool {
    if netloc.first() != Some(&'[') {
        return true;
    }
    let port_only = |rest: &[char]| match rest.split_first() {
        None => true,
        Some((':', digits)) => {
            (1..=5).contains(&digits.len()) && digits.iter().all(char::is_ascii_digit)
        }
        Some(_) => false,
    };
    match (2..netloc.len())
        .rev()
        .find(|&close| netloc[close] == ']' && port_only(&netloc[close + 1..]))
    {
        Some(close) => django_ipv6(&netloc[1..close]),
        None => true,
    }
}

/// `urlsplit(value).hostname` is not None and at most 253 characters. Python lowercases the part
/// before any `%zone`, and U+0130 is the one character whose lowercase is two long.
fn hostname_fits(netloc: &[char]) -> bool {
    let hostinfo = match netloc.iter().rposition(|&c| c == '@') {
        Some(at) => &netloc[at + 1..],
        None => netloc,
    };
    let hostname = match hostinfo.iter().position(|&c| c == '[') {
        Some(open) => {
            let rest = &hostinfo[open + 1..];
            &rest[..rest.iter().position(|&c| c == ']').unwrap_or(rest.len())]
        }
        None => {
            &hostinfo[..hostinfo
                .iter()
                .position(|&c| c == ':')
                .unwrap_or(hostinfo.len())]
        }
    };
    if hostname.is_empty() {
        return false;
    }
    let zone = hostname
        .iter()
        .position(|&c| c == '%')
        .unwrap_or(hostname.len());
    let dotted_i = hostname[..zone].iter().filter(|&&c| c == '\u{130}').count();
    hostname.len() + dotted_i <= 253
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Vector {
        input: String,
        result: Answer,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Answer {
        Ok(String),
        Errors(Vec<String>),
    }

    #[test]
    fn every_legacy_answer_is_reproduced() {
        let vectors: Vec<Vector> =
            serde_json::from_str(include_str!("django_url_vectors.json")).unwrap();
        assert!(vectors.len() >= 150, "only {} vectors", vectors.len());
        let mut wrong = Vec::new();
        for v in &vectors {
            let want = match &v.result {
                Answer::Ok(stored) => Ok(stored.clone()),
                Answer::Errors(errors) => Err(errors.clone()),
            };
            let got = validate(&v.input);
            if got != want {
                wrong.push(format!("{:?}: got {got:?}, legacy says {want:?}", v.input));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {}:\n{}",
            wrong.len(),
            vectors.len(),
            wrong.join("\n")
        );
    }

    #[test]
    fn python_ipv6_follows_ipaddress() {
        for ok in [
            "::",
            "::1",
            "1::",
            "1:2:3:4:5:6:7:8",
            "1::8",
            "::ffff:1.2.3.4",
            "fe80::1%eth0",
            "1:2:3:4:5:6:1.2.3.4",
        ] {
            assert!(python_ipv6(ok), "{ok}");
        }
        for bad in [
            "",
            ":",
            ":::",
            "1:2",
            "1::2::3",
            ":1::2",
            "1::2:",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7::8",
            "12345::",
            "::1.2.3",
            "::01.2.3.4",
            "fe80::1%",
            "a::1%b%c",
            "g::1",
        ] {
            assert!(!python_ipv6(bad), "{bad}");
        }
    }
}
