//! Unit tests of the limits on a filter list (module docs of `filters`).

use super::*;

fn err_of(filters: &[String]) -> FilterError {
    match Filter::parse(filters) {
        Err(e) => e,
        Ok(f) => panic!("{} filters: parsed {f:?}", filters.len()),
    }
}

#[test]
fn count_of_filters_is_limited() {
    assert!(Filter::parse(&vec!["name==a".to_owned(); MAX_FILTERS]).is_ok());
    let e = err_of(&vec!["name==a".to_owned(); MAX_FILTERS + 1]);
    assert!(matches!(e, FilterError::TooMany { count: 65 }), "{e}");
    assert_eq!(
        e.to_string(),
        "65 filters in one Walk; the limit is 64 filters"
    );
    // Refused before parsing: even a list of bad strings gets this.
    let e = err_of(&vec!["name~=\\pL{100}".to_owned(); 300]);
    assert!(matches!(e, FilterError::TooMany { count: 300 }), "{e}");
    assert_eq!(e.filter(), "");
}

#[test]
fn length_of_a_filter_is_limited() {
    let fits = format!("name=={}", "x".repeat(MAX_FILTER_BYTES - 6));
    assert!(Filter::parse(&[fits]).is_ok());
    // Bytes, not characters: 'é' is two.
    let over = format!("name=={}x", "é".repeat((MAX_FILTER_BYTES - 6) / 2));
    let e = err_of(&["name==a".to_owned(), over]);
    assert!(matches!(e, FilterError::TooLong { len: 8193, .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("8193 bytes") && msg.contains("8192"), "{msg}");
    assert!(msg.len() < 200, "the message quotes only the start: {msg}");
    assert!(e.filter().starts_with("name==éé") && e.filter().ends_with('…'));
}

#[test]
fn count_of_regexes_is_limited_across_the_list() {
    let re = |i: usize| format!("name~=^a{i}");
    let within: Vec<String> = (0..MAX_REGEXES).map(re).collect();
    assert!(Filter::parse(&within).is_ok());
    // Other selectors do not count.
    let mut more = within.clone();
    more.push("name==x,kind!=view,labels.a".to_owned());
    assert!(Filter::parse(&more).is_ok());
    // The 17th, in another string or in the same one.
    let mut over = within.clone();
    over.push("name==x,name~=b".to_owned());
    let e = err_of(&over);
    assert!(
        matches!(&e, FilterError::TooManyRegexes { filter, pos: 14 } if filter == "name==x,name~=b"),
        "{e:?}"
    );
    let one = (0..=MAX_REGEXES).map(re).collect::<Vec<_>>().join(",");
    let msg = err_of(&[one]).to_string();
    assert!(
        msg.contains("regular expression 17 ") && msg.contains("limit is 16 regular expressions"),
        "{msg}"
    );
}

#[test]
fn regex_compile_size_is_limited() {
    for ok in [
        r"\pL",
        r"\w+",
        r"^\pL+$",
        r"\pL{6}",
        r"(?-u:\w){100}",
        "[a-z]{100}",
        "^base-[0-9]+$",
        "a{1000}",
    ] {
        assert!(
            Filter::parse(&[format!("name~={ok}")]).is_ok(),
            "{ok} should fit the limit"
        );
    }
    for big in [
        r"\pL{7}",
        r"\pL{100}",
        r"\w{50}",
        "((a{100}){100}){100}",
        r"[\pL\pN]{30}",
    ] {
        match err_of(&[format!("name~={big}")]) {
            FilterError::Regex {
                source, pattern, ..
            } => {
                assert_eq!(pattern, big);
                assert!(
                    matches!(source, regex::Error::CompiledTooBig(REGEX_SIZE_LIMIT)),
                    "{big}: {source}"
                );
            }
            e => panic!("{big}: {e}"),
        }
    }
    let msg = err_of(&[r"name~=\pL{100}".to_owned()]).to_string();
    assert_eq!(
        msg,
        r#"filter "name~=\\pL{100}" at 6: invalid regular expression "\\pL{100}": compiled, it would exceed the size limit of 262144 bytes per regular expression (Unicode classes such as \pL and \w are large: repeat them less, or use ASCII ones such as [a-z] or (?-u:\w))"#
    );
}
