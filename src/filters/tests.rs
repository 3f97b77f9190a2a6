//! Unit tests of the filter syntax, its semantics and its limits.

use super::*;
use std::collections::BTreeMap;

/// A layer as Walk sees it; absent fields are `None`.
#[derive(Debug, Clone, Default, PartialEq)]
struct Layer {
    name: Option<String>,
    parent: Option<String>,
    kind: Option<String>,
    labels: BTreeMap<String, String>,
}

impl Adaptor for Layer {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "name" => self.name.clone(),
            "parent" => self.parent.clone(),
            "kind" => self.kind.clone(),
            "labels" if path.len() > 1 => self.labels.get(&path[1..].join(".")).cloned(),
            _ => None,
        }
    }
}

fn layer(name: &str, parent: Option<&str>, labels: &[(&str, &str)]) -> Layer {
    Layer {
        name: Some(name.to_owned()),
        parent: parent.map(str::to_owned),
        kind: None,
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn strings(filters: &[&str]) -> Vec<String> {
    filters.iter().map(|s| (*s).to_owned()).collect()
}

fn parse(filters: &[&str]) -> Result<Filter, FilterError> {
    Filter::parse(&strings(filters))
}

fn parse1(filter: &str) -> Filter {
    match parse(&[filter]) {
        Ok(f) => f,
        Err(e) => panic!("{filter:?} should parse: {e}"),
    }
}

/// Indices of the corpus items that `filter` matches.
fn select(filters: &[&str], corpus: &[Layer]) -> Vec<usize> {
    let f = match parse(filters) {
        Ok(f) => f,
        Err(e) => panic!("{filters:?} should parse: {e}"),
    };
    (0..corpus.len())
        .filter(|&i| f.matches(&corpus[i]))
        .collect()
}

fn syntax_err(filter: &str) -> (usize, SyntaxErrorKind, Option<String>) {
    match parse(&[filter]) {
        Err(FilterError::Syntax {
            pos,
            kind,
            found,
            filter: f,
        }) => {
            assert_eq!(f, filter);
            (pos, kind, found)
        }
        Err(e) => panic!("{filter:?}: expected a syntax error, got {e}"),
        Ok(f) => panic!("{filter:?}: expected a syntax error, parsed {f:?}"),
    }
}

fn err_at(filter: &str, pos: usize, kind: SyntaxErrorKind) {
    let (p, k, found) = syntax_err(filter);
    assert_eq!((p, k), (pos, kind), "{filter:?} (found {found:?})");
}

/// The fieldpath and operator of the single selector of `filter`.
fn selector(filter: &str) -> (Vec<String>, Op) {
    let mut f = parse1(filter);
    assert_eq!(f.groups.len(), 1);
    let mut group = f.groups.remove(0);
    assert_eq!(group.len(), 1, "{filter:?}: {group:?}");
    let s = group.remove(0);
    (s.path, s.op)
}

fn path(filter: &str) -> Vec<String> {
    selector(filter).0
}

/// The value of the single `==` selector of `filter`.
fn eq_value(filter: &str) -> String {
    match selector(filter).1 {
        Op::Equal(v) => v,
        op => panic!("{filter:?}: expected ==, got {op:?}"),
    }
}

/// The pattern of the single `~=` selector of `filter`.
fn regex_value(filter: &str) -> String {
    match selector(filter).1 {
        Op::Matches(re) => re.as_str().to_owned(),
        op => panic!("{filter:?}: expected ~=, got {op:?}"),
    }
}

// -- containerd's filter_test.go, with `other` played by `parent` -------

fn containerd_corpus() -> Vec<Layer> {
    vec![
        layer("foo", None, &[("foo", "true")]),
        layer("bar", None, &[]),
        layer(
            "foo",
            None,
            &[("foo", "present"), ("more complex label", "present")],
        ),
        layer("bar", None, &[("bar", "true")]),
        layer(
            "fooer",
            None,
            &[("more complex label with \\ and \"", "present")],
        ),
        layer(
            "fooer",
            None,
            &[("more complex label with \\ and \".post", "present")],
        ),
        layer("baz", Some("too complex, yo"), &[]),
        layer("bazo", Some("abc"), &[]),
        layer("compound", None, &[("foo", "omg_asdf.asdf-qwer")]),
    ]
}

#[test]
fn containerd_matching_cases() {
    let c = containerd_corpus();
    let all: Vec<usize> = (0..c.len()).collect();
    let cases: &[(&str, Vec<usize>)] = &[
        ("", all.clone()),
        ("name", all.clone()),
        ("labels.foo", vec![0, 2, 8]),
        ("labels.foo,name", vec![0, 2, 8]),
        ("labels.foo==true", vec![0]),
        ("labels.foo==omg_asdf.asdf-qwer", vec![8]),
        ("name==bar", vec![1, 3]),
        ("name!=bar", vec![0, 2, 4, 5, 6, 7, 8]),
        ("name==bar,labels.bar", vec![3]),
        ("parent==\"too complex, yo\"", vec![6]),
        ("parent~=[abc]+,name!=foo", vec![6, 7]),
        ("parent~=/[abc]+/,name!=foo", vec![6, 7]),
        ("parent~=/[abc]{1,2}/,name!=foo", vec![6, 7]),
        // Valid syntax (`\/` escapes the delimiter) that matches nothing.
        ("parent~=/[abc]{0,1}\"\\//,name!=foo", vec![]),
        ("name==bar,labels.bar==true", vec![3]),
        ("name==bar,labels.bar==wrong", vec![]),
        (r#"name==foo,labels."more complex label""#, vec![2]),
        (
            r#"labels."more complex label with \\ and \""==present"#,
            vec![4],
        ),
        (
            r#"labels."more complex label with \\ and \"".post==present"#,
            vec![5],
        ),
    ];
    for (filter, want) in cases {
        assert_eq!(&select(&[filter], &c), want, "{filter:?}");
    }
}

#[test]
fn containerd_error_cases() {
    use SyntaxErrorKind::*;
    err_at("labels.|foo|==omg_asdf.asdf-qwer", 7, InvalidQuote);
    err_at(
        r#"labels.?"more complex label with \\ and \"".post==present"#,
        7,
        ExpectedField,
    );
    err_at("name==foo,", 10, ExpectedField);
    err_at("labels.", 7, ExpectedField);
    err_at("image~=,id?=?fbaq", 7, ExpectedValue);
    err_at("labels.ns/key==value", 9, UnterminatedQuote);
    err_at("labels.key==/value", 12, UnterminatedQuote);
}

/// The examples in the doc comment of containerd's filter.go.
#[test]
fn containerd_doc_examples() {
    let c = vec![
        layer("foo", None, &[("bar", "1")]),
        layer(
            "foo",
            None,
            &[("foo", "x"), ("very complex label", "something")],
        ),
        layer(
            "other",
            None,
            &[("very complex label", "else"), ("bar", "")],
        ),
    ];
    assert_eq!(select(&["name==foo"], &c), vec![0, 1]);
    assert_eq!(select(&["labels.foo"], &c), vec![1]);
    assert_eq!(
        select(&[r#"labels."very complex label"==something"#], &c),
        vec![1]
    );
    assert_eq!(select(&["name==foo,labels.bar"], &c), vec![0]);
    assert_eq!(select(&["name!=foo"], &c), vec![2]);
    assert_eq!(select(&["labels.\"very complex label\"~=^s"], &c), vec![1]);
}

// -- operators --------------------------------------------------------

fn op_corpus() -> Vec<Layer> {
    let mut c = vec![
        layer("base", None, &[("tier", "gold"), ("empty", "")]),
        layer("app", Some("base"), &[("tier", "silver")]),
        layer("scratch", Some("app"), &[]),
    ];
    c[0].kind = Some("committed".into());
    c[1].kind = Some("committed".into());
    c[2].kind = Some("active".into());
    c
}

#[test]
fn presence() {
    let c = op_corpus();
    assert_eq!(select(&["name"], &c), vec![0, 1, 2]);
    assert_eq!(select(&["parent"], &c), vec![1, 2]);
    assert_eq!(select(&["labels.tier"], &c), vec![0, 1]);
    // Present with an empty value is still present.
    assert_eq!(select(&["labels.empty"], &c), vec![0]);
    assert_eq!(select(&["labels.nope"], &c), Vec::<usize>::new());
    assert_eq!(select(&["unknown"], &c), Vec::<usize>::new());
    assert!(matches!(selector("labels.tier").1, Op::Present));
}

#[test]
fn equal() {
    let c = op_corpus();
    assert_eq!(select(&["name==app"], &c), vec![1]);
    assert_eq!(select(&["parent==base"], &c), vec![1]);
    assert_eq!(select(&["kind==committed"], &c), vec![0, 1]);
    assert_eq!(select(&["labels.tier==gold"], &c), vec![0]);
    assert_eq!(select(&["name==ap"], &c), Vec::<usize>::new());
    // == "" needs the field present.
    assert_eq!(select(&[r#"labels.empty=="""#], &c), vec![0]);
    assert_eq!(select(&[r#"parent=="""#], &c), Vec::<usize>::new());
}

#[test]
fn not_equal_counts_absent_as_empty() {
    let c = op_corpus();
    assert_eq!(select(&["name!=app"], &c), vec![0, 2]);
    assert_eq!(select(&["kind!=committed"], &c), vec![2]);
    // Absent fields differ from any non-empty value (containerd).
    assert_eq!(select(&["parent!=base"], &c), vec![0, 2]);
    assert_eq!(select(&["labels.tier!=gold"], &c), vec![1, 2]);
    // ... but not from "": absent and empty both compare as "".
    assert_eq!(select(&[r#"parent!="""#], &c), vec![1, 2]);
    assert_eq!(select(&[r#"labels.empty!="""#], &c), Vec::<usize>::new());
}

#[test]
fn regex_match() {
    let c = op_corpus();
    assert_eq!(select(&["name~=a"], &c), vec![0, 1, 2]);
    // Unanchored, like Go's MatchString.
    assert_eq!(select(&["name~=pp"], &c), vec![1]);
    assert_eq!(select(&["name~=^(base|app)$"], &c), vec![0, 1]);
    assert_eq!(select(&["kind~=^comm"], &c), vec![0, 1]);
    assert_eq!(select(&["labels.tier~=l"], &c), vec![0, 1]);
    assert_eq!(select(&[r"name~=^\w+$"], &c), vec![0, 1, 2]);
    assert_eq!(select(&["name~=(?i)^APP$"], &c), vec![1]);
    // Absent fields never match, even a pattern that matches "".
    assert_eq!(select(&[r#"parent~=".*""#], &c), vec![1, 2]);
    assert_eq!(select(&["labels.tier~=^$"], &c), Vec::<usize>::new());
    assert_eq!(select(&["labels.empty~=^$"], &c), vec![0]);
    assert_eq!(regex_value("name~=[abc]+"), "[abc]+");
}

#[test]
fn regex_quoting() {
    assert_eq!(regex_value("name~=/[abc]{0,2}/"), "[abc]{0,2}");
    assert_eq!(regex_value("name~=|[abc]{0,2}|"), "[abc]{0,2}");
    assert_eq!(regex_value(r"name~=/foo\/bar/"), "foo/bar");
    assert_eq!(regex_value("name~=|foo/bar|"), "foo/bar");
    assert_eq!(regex_value(r"name~=|a\|b|"), "a|b");
    assert_eq!(regex_value(r#"name~="a|b""#), "a|b");
    assert_eq!(regex_value(r#"name~="\\d+""#), r"\d+");
    assert_eq!(regex_value(r"name~=[abc]\+"), r"[abc]\+");
    assert_eq!(regex_value("name~=牛"), "牛");
    assert_eq!(regex_value("name~=|牛|"), "牛");
    // A regex with a comma must be quoted; bare values stop at commas.
    assert_eq!(regex_value("name~=/^a{1,2}$/"), "^a{1,2}$");
    // `\d` is no escape in containerd's quoted strings.
    err_at(r"name~=/\d+/", 6, SyntaxErrorKind::IllegalEscape);
    // `\/` is only an escape inside /…/.
    err_at(r"name~=|a\/b|", 6, SyntaxErrorKind::IllegalEscape);
    err_at(r#"name~="a\/b""#, 6, SyntaxErrorKind::IllegalEscape);
    let c = op_corpus();
    assert_eq!(select(&["name~=/^(base|app)$/"], &c), vec![0, 1]);
    assert_eq!(select(&["name~=|^ba|"], &c), vec![0]);
}

#[test]
fn bad_regex_is_a_parse_error() {
    for (filter, pos, pattern) in [
        ("name~=[", 6, "["),
        (r#"name==x,labels.a~="(""#, 18, "("),
        ("name~=/a{2,1}/", 6, "a{2,1}"),
        (r"name~=\", 6, r"\"),
        ("name~=*", 6, "*"),
    ] {
        match parse(&[filter]) {
            Err(e @ FilterError::Regex { .. }) => {
                let FilterError::Regex {
                    pos: p,
                    pattern: pat,
                    filter: f,
                    ..
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!((f.as_str(), *p, pat.as_str()), (filter, pos, pattern));
                let msg = e.to_string();
                assert!(
                    msg.starts_with(&format!(
                        "filter {filter:?} at {pos}: invalid regular expression {pattern:?}: "
                    )),
                    "{msg}"
                );
                assert!(!msg.contains('\n'), "{msg}");
                assert!(std::error::Error::source(&e).is_some());
            }
            other => panic!("{filter:?}: expected a regex error, got {other:?}"),
        }
    }
}

// -- field paths and quoting ------------------------------------------

#[test]
fn fieldpaths() {
    assert_eq!(path("name"), ["name"]);
    assert_eq!(path("labels.foo"), ["labels", "foo"]);
    assert_eq!(path("labels.a.b.c"), ["labels", "a", "b", "c"]);
    assert_eq!(path("a_1.2B.__"), ["a_1", "2B", "__"]);
    assert_eq!(path(r#""name""#), ["name"]);
    assert_eq!(
        path(r#""leading quote".postquote==value"#),
        ["leading quote", "postquote"]
    );
    assert_eq!(path(r#"labels."a.b".c"#), ["labels", "a.b", "c"]);
    assert_eq!(path(r#"labels."""#), ["labels", ""]);
    assert_eq!(path("labels. foo"), ["labels", "foo"]);
}

#[test]
fn label_keys_with_dots_and_slashes() {
    let c = vec![
        layer(
            "a",
            None,
            &[
                ("layerd.io/pool", "fast"),
                ("containerd.io/gc.root", "2024"),
            ],
        ),
        layer("b", None, &[("layerd.io/pool", "slow")]),
        layer("c", None, &[("plain.dotted", "x")]),
    ];
    assert_eq!(
        path(r#"labels."layerd.io/pool""#),
        ["labels", "layerd.io/pool"]
    );
    assert_eq!(select(&[r#"labels."layerd.io/pool""#], &c), vec![0, 1]);
    assert_eq!(select(&[r#"labels."layerd.io/pool"==fast"#], &c), vec![0]);
    assert_eq!(
        select(&[r#"labels."layerd.io/pool"!=fast"#], &c),
        vec![1, 2]
    );
    assert_eq!(select(&[r#"labels."containerd.io/gc.root""#], &c), vec![0]);
    assert_eq!(
        select(&[r#"labels."containerd.io/gc.root"~=^20"#], &c),
        vec![0]
    );
    // Dotted keys without slashes work bare too (components are joined).
    assert_eq!(select(&["labels.plain.dotted==x"], &c), vec![2]);
    assert_eq!(select(&[r#"labels."plain.dotted"==x"#], &c), vec![2]);
    // Unquoted, the slash starts an (unterminated) quoted literal.
    err_at(
        "labels.containerd.io/gc.root",
        20,
        SyntaxErrorKind::UnterminatedQuote,
    );
    err_at(
        "labels.layerd.io/pool==fast",
        16,
        SyntaxErrorKind::UnterminatedQuote,
    );
    // And `-` is no field character.
    // And `-` is no field character: after `foo` an operator must come.
    err_at("labels.foo-bar", 10, SyntaxErrorKind::ExpectedOperator);
}

#[test]
fn values() {
    assert_eq!(eq_value("name==foo"), "foo");
    assert_eq!(
        eq_value("name==punctuated_value.foo-bar"),
        "punctuated_value.foo-bar"
    );
    assert_eq!(eq_value("name==a/b"), "a/b");
    // `|` inside a value is literal: there is no OR inside a filter.
    assert_eq!(eq_value("name==a|b"), "a|b");
    assert_eq!(eq_value("name==a=b"), "a=b");
    assert_eq!(eq_value("name==foo==bar"), "foo==bar");
    assert_eq!(eq_value("name==a\"b"), "a\"b");
    assert_eq!(eq_value("name==x\"y\""), "x\"y\"");
    assert_eq!(eq_value("name==牛"), "牛");
    assert_eq!(eq_value("name==sha256:0123abcd"), "sha256:0123abcd");
    assert_eq!(eq_value("name==123"), "123");
    assert_eq!(eq_value("name==_x"), "_x");
    assert_eq!(eq_value(r#"name=="too complex, yo""#), "too complex, yo");
    assert_eq!(eq_value(r#"name==" lead and trail ""#), " lead and trail ");
    assert_eq!(eq_value(r#"name=="""#), "");
    let c = vec![
        layer("a|b", None, &[]),
        layer("a", None, &[]),
        layer("b", None, &[]),
    ];
    assert_eq!(select(&["name==a|b"], &c), vec![0]);
}

#[test]
fn escapes_in_quoted_strings() {
    assert_eq!(eq_value(r#"name=="a\"b""#), "a\"b");
    assert_eq!(eq_value(r#"name=="a\\b""#), "a\\b");
    assert_eq!(
        eq_value(r#"name=="\a\b\f\n\r\t\v""#),
        "\x07\x08\x0c\n\r\t\x0b"
    );
    assert_eq!(eq_value(r#"name=="\x41\101\u00e9\U0001F600""#), "AAé😀");
    // Byte escapes build UTF-8.
    assert_eq!(eq_value(r#"name=="\xc3\xa9\303\251""#), "éé");
    // Go writes a surrogate as U+FFFD.
    assert_eq!(eq_value(r#"name=="\ud800""#), "\u{FFFD}");
    assert_eq!(path(r#"labels."\x2e""#), ["labels", "."]);

    use SyntaxErrorKind::*;
    err_at(r#"labels."\g""#, 7, IllegalEscape);
    err_at(r#"labels."\'""#, 7, IllegalEscape);
    err_at(r#"labels."\|""#, 7, IllegalEscape);
    err_at(r#"labels."\xaz""#, 7, IllegalNumericEscape);
    err_at(r#"labels."\u12""#, 7, IllegalNumericEscape);
    err_at(r#"labels."\18""#, 7, IllegalNumericEscape);
    // Well-formed but out of range.
    err_at(r#"name=="\777""#, 6, InvalidQuoted);
    err_at(r#"name=="\U00110000""#, 6, InvalidQuoted);
    err_at(r#"name=="\xff""#, 6, InvalidUtf8);
    // A backslash at the end does not escape the end.
    err_at("name==\"abc\\", 6, IllegalEscape);
    // Go reports the first problem even when later ones follow.
    err_at(r#"a=="\q\xzz""#, 3, IllegalEscape);
}

#[test]
fn quotes_allowed_per_position() {
    use SyntaxErrorKind::*;
    // Fields and ==/!= values take only double quotes.
    err_at("labels.|foo|", 7, InvalidQuote);
    err_at("labels./foo/", 7, InvalidQuote);
    err_at("|name|==x", 0, InvalidQuote);
    err_at("name==/foo/", 6, InvalidQuote);
    err_at("name!=|foo|", 6, InvalidQuote);
    let (_, _, found) = syntax_err("name==/foo/");
    assert_eq!(found.as_deref(), Some("/foo/"));
}

#[test]
fn unterminated_quotes() {
    use SyntaxErrorKind::*;
    err_at(r#"labels."abc"#, 7, UnterminatedQuote);
    err_at(r#"name=="abc"#, 6, UnterminatedQuote);
    err_at("name~=/abc", 6, UnterminatedQuote);
    err_at("name~=|abc", 6, UnterminatedQuote);
    err_at("\"", 0, UnterminatedQuote);
    // A newline ends a quoted literal.
    err_at("labels.\"containerd.io\nkey\"==value", 7, UnterminatedQuote);
    let (_, _, found) = syntax_err("labels.key==/value");
    assert_eq!(found.as_deref(), Some("/value"));
}

// -- AND / OR ---------------------------------------------------------

#[test]
fn and_within_a_string() {
    let c = op_corpus();
    assert_eq!(
        select(&["kind==committed,labels.tier==silver"], &c),
        vec![1]
    );
    assert_eq!(select(&["kind==committed,parent"], &c), vec![1]);
    assert_eq!(select(&["name~=a,name~=p,kind!=active"], &c), vec![1]);
    assert_eq!(select(&["name==base,name==app"], &c), Vec::<usize>::new());
    let f = parse1("a,b==1,c!=2,d~=3");
    assert_eq!(f.groups.len(), 1);
    assert_eq!(f.groups[0].len(), 4);
}

#[test]
fn or_across_strings() {
    let c = op_corpus();
    assert_eq!(select(&["name==base", "name==scratch"], &c), vec![0, 2]);
    assert_eq!(
        select(&["labels.tier==gold", "kind==active"], &c),
        vec![0, 2]
    );
    assert_eq!(
        select(&["name==nope", "name==nada"], &c),
        Vec::<usize>::new()
    );
    assert_eq!(
        select(&["kind==committed,labels.tier==gold", "parent==app"], &c),
        vec![0, 2]
    );
    // Duplicates change nothing.
    assert_eq!(select(&["name==app", "name==app"], &c), vec![1]);
}

#[test]
fn empty_list_and_empty_string_match_everything() {
    let c = op_corpus();
    assert_eq!(select(&[], &c), vec![0, 1, 2]);
    assert_eq!(select(&[""], &c), vec![0, 1, 2]);
    // An empty string in the list makes the whole OR true.
    assert_eq!(select(&["name==nope", ""], &c), vec![0, 1, 2]);
    let nothing = Layer::default();
    assert!(parse(&[]).is_ok_and(|f| f.matches(&nothing)));
    assert!(parse(&[""]).is_ok_and(|f| f.matches(&nothing)));
    assert!(parse(&["name"]).is_ok_and(|f| !f.matches(&nothing)));
}

#[test]
fn closures_are_adaptors() {
    let f = parse1(r#"labels."layerd.io/pool"==fast,name"#);
    let pool = |p: &[String]| -> Option<String> {
        match p {
            [a, b] if a == "labels" && b == "layerd.io/pool" => Some("fast".into()),
            [a] if a == "name" => Some("x".into()),
            _ => None,
        }
    };
    assert!(f.matches(&pool));
    assert!(!f.matches(&|_: &[String]| -> Option<String> { None }));
}

#[test]
fn error_names_the_failing_string() {
    let e = match parse(&["name==a", "name==b,", "name=="]) {
        Err(e) => e,
        Ok(f) => panic!("parsed {f:?}"),
    };
    assert_eq!(e.filter(), "name==b,");
    assert_eq!(e.pos(), 8);
    assert_eq!(e.to_string(), r#"filter "name==b," at 8: expected field"#);
}

// -- white space ------------------------------------------------------

#[test]
fn whitespace_accepted_where_containerd_skips_it() {
    let c = op_corpus();
    for filter in [
        " name==app",
        "\tname==app",
        "name ==app",
        "name== app",
        "name == app",
        "name\t==\u{a0}app",
        "kind==committed, name==app",
        "kind==committed,\n name==app",
        "  kind  ==  committed,  name  !=  base",
        "kind==committed, labels. tier==silver",
        r#"name == "app""#,
    ] {
        assert_eq!(select(&[filter], &c), vec![1], "{filter:?}");
    }
    // Spaces inside a quoted value are kept.
    assert_eq!(eq_value(r#"name== " x y " "#.trim_end()), " x y ");
}

#[test]
fn whitespace_rejected_where_containerd_rejects_it() {
    use SyntaxErrorKind::*;
    // After a value: only `,` or the end may follow, at once.
    err_at("name==app ", 9, ExpectedSeparator);
    err_at("name==app ,kind", 9, ExpectedSeparator);
    err_at("name==a b", 7, ExpectedSeparator);
    err_at(r#"name=="a" "#, 9, ExpectedSeparator);
    // After a field that ends a selector, white space means an operator
    // must come.
    err_at("name ", 5, ExpectedOperator);
    err_at("name ,kind", 5, ExpectedOperator);
    err_at("name kind", 5, ExpectedOperator);
    err_at("labels .foo", 7, ExpectedOperator);
    // Only "" is the match-everything filter.
    err_at(" ", 1, ExpectedField);
    err_at("\t\n", 2, ExpectedField);
}

// -- errors -----------------------------------------------------------

#[test]
fn error_messages() {
    let msg = |f: &str| match parse(&[f]) {
        Err(e) => e.to_string(),
        Ok(f) => panic!("parsed {f:?}"),
    };
    assert_eq!(msg("name=="), r#"filter "name==" at 6: expected value"#);
    assert_eq!(
        msg("==x"),
        r#"filter "==x" at 0: expected field, found "==""#
    );
    assert_eq!(
        msg("a,,b"),
        r#"filter "a,,b" at 2: expected field, found ",""#
    );
    assert_eq!(
        msg("name=x"),
        r#"filter "name=x" at 4: unsupported operator, found "=""#
    );
    assert_eq!(
        msg("name==a b"),
        r#"filter "name==a b" at 7: expected ',' or end of filter, found " ""#
    );
    assert_eq!(
        msg("name foo"),
        r#"filter "name foo" at 5: expected operator (==, != or ~=), found "foo""#
    );
    assert_eq!(
        msg(r#"labels."abc"#),
        r#"filter "labels.\"abc" at 7: quoted literal not terminated, found "\"abc""#
    );
    assert_eq!(
        msg("labels.|x|"),
        r#"filter "labels.|x|" at 7: invalid quote: only "…" here (/…/ and |…| are for ~= values), found "|x|""#
    );
    assert!(
        msg("name~=(").starts_with(r#"filter "name~=(" at 6: invalid regular expression "(": "#)
    );
}

#[test]
fn syntax_errors() {
    use SyntaxErrorKind::*;
    err_at("name==", 6, ExpectedValue);
    err_at("name!=", 6, ExpectedValue);
    err_at("name~=", 6, ExpectedValue);
    err_at("name== ", 7, ExpectedValue);
    err_at("name==,kind", 6, ExpectedValue);
    err_at("name==.x", 6, ExpectedValue);
    // So a regex starting with `.` must be quoted, as in containerd.
    err_at("name~=.*", 6, ExpectedValue);
    err_at("name== =x", 7, ExpectedValue);
    err_at("==x", 0, ExpectedField);
    err_at("!=x", 0, ExpectedField);
    err_at(",", 0, ExpectedField);
    err_at(",name", 0, ExpectedField);
    err_at("a,,b", 2, ExpectedField);
    err_at("a, ,b", 3, ExpectedField);
    err_at("a,", 2, ExpectedField);
    err_at(".a", 0, ExpectedField);
    err_at("a..b", 2, ExpectedField);
    err_at("labels.foo.", 11, ExpectedField);
    err_at("-x", 0, ExpectedField);
    err_at("名前==x", 0, ExpectedField);
    err_at("name=x", 4, UnsupportedOperator);
    err_at("name===x", 4, UnsupportedOperator);
    err_at("name!x", 4, UnsupportedOperator);
    err_at("name~x", 4, UnsupportedOperator);
    err_at("name=~x", 4, UnsupportedOperator);
    err_at("name==!x", 4, UnsupportedOperator);
    err_at("name\"x\"", 4, ExpectedOperator);
    err_at("name-x", 4, ExpectedOperator);
    // A zero-width space ends a bare value (Cf is not graphic in Go).
    err_at("name==a\u{200b}b", 7, ExpectedSeparator);
    err_at("name==a\u{7}b", 7, ExpectedSeparator);
    // NUL is never allowed.
    err_at("a\0", 1, UnexpectedNull);
    err_at("a\0==b", 1, UnexpectedNull);
    err_at("\0", 0, UnexpectedNull);
    err_at("a==\0", 3, UnexpectedNull);
    err_at("a==b\0", 4, UnexpectedNull);
    err_at("a==\"b\0\"", 3, UnexpectedNull);
}

/// Odd inputs give a result or an error inside the string, never a panic.
#[test]
fn never_panics_on_odd_input() {
    const ALPHABET: &[char] = &[
        'a', 'Z', '_', '1', '.', ',', '=', '!', '~', '"', '/', '|', '\\', 'x', 'u', '0', '7', ' ',
        '\n', '\0', 'é', '牛', '\u{200b}', '(', '[', '*',
    ];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let item = Layer::default();
    for _ in 0..20_000 {
        let len = next() % 12;
        let filter: String = (0..len)
            .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
            .collect();
        match parse(&[&filter]) {
            Ok(f) => {
                f.matches(&item);
            }
            Err(e) => {
                assert_eq!(e.filter(), filter);
                assert!(filter.is_char_boundary(e.pos()), "{e}");
                assert!(!e.to_string().is_empty());
            }
        }
    }
}
