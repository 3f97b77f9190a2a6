//! Filters for `Walk`, in containerd's filter syntax (`pkg/filters`).
//!
//! `Walk` takes a list of filter strings. The list is OR'd: an item matches
//! if any filter matches, and an empty list matches everything. Each filter
//! string is a comma-separated list of *selectors* that must all match (AND);
//! the empty string `""` is a filter that matches everything.
//!
//! ```text
//! filter    := ""  |  selector ("," selector)*
//! selector  := fieldpath [operator value]
//! fieldpath := field ("." field)*
//! field     := [A-Za-z0-9_]+  |  "double quoted"
//! operator  := "==" | "!=" | "~="
//! value     := bare | "double quoted"      (for ~= also /slashed/ or |piped|)
//! ```
//!
//! Examples:
//!
//! ```text
//! name==foo                                  name is "foo"
//! labels.foo                                 label "foo" is present
//! labels."layerd.io/pool"==fast              quote keys with dots or slashes
//! name==foo,labels.bar                       AND
//! kind!=view                                 absent fields count as ""
//! name~=^base-[0-9]+$                        regular expression (`regex` crate)
//! labels."containerd.io/gc.root"~=/^a\/b/    regex quoted with / (or |)
//! ```
//!
//! Meaning of a selector, given the field's value from the [`Adaptor`]:
//!
//! * `path` — true iff the field is present;
//! * `path==v` — true iff the field is present and equal to `v`;
//! * `path!=v` — true iff the value differs from `v`, an absent field counting
//!   as the empty string (so it is true for an absent field unless `v` is
//!   `""`), as containerd does;
//! * `path~=re` — true iff the field is present and the (unanchored) regular
//!   expression matches its value. (containerd does not check presence: it
//!   matches an absent field as `""`.) The pattern is compiled when the
//!   filter is parsed, so a bad one is a parse error (containerd logs it and
//!   treats the selector as false).
//!
//! Lexical rules, as containerd's scanner has them:
//!
//! * A bare value begins after the operator and runs up to a `,`, whitespace
//!   or a control/format character; it may contain `.`, `/`, `|`, `=` and so
//!   on (`name==a|b` compares with the literal `a|b`: `|` is not an OR).
//!   A value that begins with `"`, `/` or `|` is a quoted string, and one
//!   may not begin with `.`, `=`, `!` or `~`: quote it (`name~=".*"`).
//! * Quoted strings take Go's escapes: `\a \b \f \n \r \t \v \\`, the quote
//!   character itself, `\NNN` (octal), `\xHH`, `\uHHHH` and `\UHHHHHHHH`. Any
//!   other escape is an error, so a `/`-quoted regex cannot use `\d`; write
//!   it bare or inside `"…"` as `"\\d"`. Fields and `==`/`!=` values accept
//!   only `"`; `/…/` and `|…|` are accepted for `~=` values only.
//! * Whitespace may appear before a field, around an operator and after a
//!   `,`, but not after a value or a field that ends a selector: `name ,x`,
//!   `name==x ,y` and `name==x ` (trailing) are errors, like in containerd.
//! * Field paths reach the adaptor component by component:
//!   `labels.a.b` is `["labels", "a", "b"]`, `labels."a.b"` is
//!   `["labels", "a.b"]`. Adaptors join the components after `labels` with
//!   `.`, as containerd's do, so both find the label `a.b`.
//!
//! Errors give the filter, the byte offset and what was expected, e.g.
//! `filter "name==" at 6: expected value`.
//!
//! Limits (Walk is open to every local user, so one request must not make
//! the daemon compile or hold much): at most [`MAX_FILTERS`] filter strings
//! of at most [`MAX_FILTER_BYTES`] bytes each, checked before anything is
//! parsed; at most [`MAX_REGEXES`] `~=` selectors in one list; each pattern
//! compiled with the `regex` crate's size limits ([`REGEX_SIZE_LIMIT`] for
//! its compiled program, [`REGEX_DFA_SIZE_LIMIT`] for its lazy DFA cache).
//! Compiled patterns live in the [`Filter`] only, which lives for one call:
//! nothing is cached across requests. Each limit, when exceeded, is an
//! error naming it.

use std::fmt;

use regex::{Regex, RegexBuilder};

/// Filter strings in one list.
pub const MAX_FILTERS: usize = 64;
/// Bytes of one filter string: room for a selector on any label pair
/// (4096 bytes of key and value) with its quotes and escapes.
pub const MAX_FILTER_BYTES: usize = 8192;
/// `~=` selectors in one list, across all its strings.
pub const MAX_REGEXES: usize = 16;
/// The `regex` crate's `size_limit` for each pattern: Unicode classes such
/// as `\pL` or `\w` fit; `\pL{100}` (megabytes compiled) does not.
pub const REGEX_SIZE_LIMIT: usize = 256 << 10;
/// The `regex` crate's `dfa_size_limit` (lazy DFA cache) for each pattern.
pub const REGEX_DFA_SIZE_LIMIT: usize = 256 << 10;

/// Anything that can answer a field path, e.g. `["name"]` or
/// `["labels", "layerd.io/pool"]`. `None` means the field is absent.
///
/// Components after `labels` should be joined with `.` to form the label key,
/// so that `labels.a.b` and `labels."a.b"` both find label `a.b`.
pub trait Adaptor {
    /// The value of the field at `path`, or `None` if it is absent.
    fn field(&self, path: &[String]) -> Option<String>;
}

/// Closures adapt too: `|path: &[String]| -> Option<String> { … }`.
impl<F> Adaptor for F
where
    F: Fn(&[String]) -> Option<String>,
{
    fn field(&self, path: &[String]) -> Option<String> {
        self(path)
    }
}

/// A parsed filter list (OR of AND-groups).
#[derive(Debug, Clone)]
pub struct Filter {
    /// OR'd; empty matches everything.
    groups: Vec<Group>,
}

/// AND'd selectors of one filter string; empty (from `""`) matches everything.
type Group = Vec<Selector>;

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

impl Filter {
    /// Parses a `Walk` filter list.
    ///
    /// # Errors
    ///
    /// The first filter string that fails to parse, as a [`FilterError`]
    /// naming that string and the byte offset of the problem.
    ///
    /// The limits (module docs) are checked first: too many strings or one
    /// too long is refused before any string is parsed.
    pub fn parse(filters: &[String]) -> Result<Filter, FilterError> {
        if filters.len() > MAX_FILTERS {
            return Err(FilterError::TooMany {
                count: filters.len(),
            });
        }
        if let Some(f) = filters.iter().find(|f| f.len() > MAX_FILTER_BYTES) {
            return Err(FilterError::TooLong {
                filter: start_of(f),
                len: f.len(),
            });
        }
        let mut groups = Vec::with_capacity(filters.len());
        let mut regexes = 0;
        for f in filters {
            let mut p = Parser::new(f, regexes);
            groups.push(p.filter()?);
            regexes = p.regexes;
        }
        Ok(Filter { groups })
    }

    /// True iff the list is empty or any filter string's selectors all match.
    pub fn matches(&self, a: &dyn Adaptor) -> bool {
        self.groups.is_empty()
            || self
                .groups
                .iter()
                .any(|group| group.iter().all(|s| s.matches(a)))
    }
}

impl Selector {
    fn matches(&self, a: &dyn Adaptor) -> bool {
        let value = a.field(&self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(want) => value.as_deref() == Some(want.as_str()),
            // containerd compares the adaptor's value, "" when absent.
            Op::NotEqual(want) => value.as_deref().unwrap_or("") != want,
            Op::Matches(re) => value.is_some_and(|v| re.is_match(&v)),
        }
    }
}

/// Why a filter string failed to parse.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// `pos` is the byte offset in `filter` where the problem starts; `found`
    /// is the offending text there (`None` at the end of the filter).
    #[error("filter {filter:?} at {pos}: {kind}{}", found_suffix(.found.as_deref()))]
    Syntax {
        /// The filter string as given.
        filter: String,
        /// Byte offset in `filter`.
        pos: usize,
        /// What was expected or wrong there.
        kind: SyntaxErrorKind,
        /// The offending token's text.
        found: Option<String>,
    },
    /// The value of a `~=` selector (starting at byte `pos`) is not a valid
    /// regular expression for the `regex` crate.
    #[error("filter {filter:?} at {pos}: invalid regular expression {pattern:?}: {}", regex_reason(.source))]
    Regex {
        /// The filter string as given.
        filter: String,
        /// Byte offset in `filter` of the (possibly quoted) value.
        pos: usize,
        /// The pattern, unquoted.
        pattern: String,
        /// Why the `regex` crate refused it.
        #[source]
        source: regex::Error,
    },
    /// More than [`MAX_FILTERS`] strings in the list.
    #[error("{count} filters in one Walk; the limit is {MAX_FILTERS} filters")]
    TooMany {
        /// How many strings the list had.
        count: usize,
    },
    /// A string longer than [`MAX_FILTER_BYTES`].
    #[error("filter {filter:?} is {len} bytes; the limit is {MAX_FILTER_BYTES} bytes per filter")]
    TooLong {
        /// The start of the filter string.
        filter: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The `~=` selector at `pos` is one more than [`MAX_REGEXES`].
    #[error("filter {filter:?} at {pos}: regular expression {} of this Walk is one too many; the limit is {MAX_REGEXES} regular expressions (~=) per Walk", MAX_REGEXES + 1)]
    TooManyRegexes {
        /// The filter string as given.
        filter: String,
        /// Byte offset in `filter` of the selector's value.
        pos: usize,
    },
}

impl FilterError {
    /// The filter string that failed.
    /// ("" when the list as a whole is refused; the start of the string
    /// when it is too long.)
    pub fn filter(&self) -> &str {
        match self {
            FilterError::Syntax { filter, .. }
            | FilterError::Regex { filter, .. }
            | FilterError::TooLong { filter, .. }
            | FilterError::TooManyRegexes { filter, .. } => filter,
            FilterError::TooMany { .. } => "",
        }
    }

    /// Byte offset of the problem in [`FilterError::filter`] (0 for a
    /// refused list or string).
    pub fn pos(&self) -> usize {
        match self {
            FilterError::Syntax { pos, .. }
            | FilterError::Regex { pos, .. }
            | FilterError::TooManyRegexes { pos, .. } => *pos,
            FilterError::TooMany { .. } | FilterError::TooLong { .. } => 0,
        }
    }
}

/// The first 64 bytes of a long filter string, for a message.
fn start_of(f: &str) -> String {
    let mut end = f.len().min(64);
    while !f.is_char_boundary(end) {
        end -= 1;
    }
    if end < f.len() {
        format!("{}…", &f[..end])
    } else {
        f.to_owned()
    }
}

fn found_suffix(found: Option<&str>) -> String {
    match found {
        Some(text) => format!(", found {text:?}"),
        None => String::new(),
    }
}

/// `regex::Error` shows syntax errors over several lines (pattern, caret,
/// then `error: <reason>`); the pattern is already in the message, so keep
/// the reason, on one line.
fn regex_reason(e: &regex::Error) -> String {
    if let regex::Error::CompiledTooBig(limit) = e {
        return format!(
            "compiled, it would exceed the size limit of {limit} bytes per regular expression (Unicode classes such as \\pL and \\w are large: repeat them less, or use ASCII ones such as [a-z] or (?-u:\\w))"
        );
    }
    let text = e.to_string();
    let reason = text.rsplit("error: ").next().unwrap_or(&text);
    reason.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What was wrong at the position of a [`FilterError::Syntax`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntaxErrorKind {
    /// A field name or a double-quoted string was needed.
    ExpectedField,
    /// One of `==`, `!=`, `~=` was needed (or `,`, or the end).
    ExpectedOperator,
    /// A bare or quoted value was needed after an operator.
    ExpectedValue,
    /// A selector is complete; only `,` or the end of the filter may follow.
    ExpectedSeparator,
    /// A run of `=`, `!`, `~` other than `==`, `!=`, `~=`.
    UnsupportedOperator,
    /// A quoted string without its closing quote before a newline or the end.
    UnterminatedQuote,
    /// A backslash followed by a character that is no escape.
    IllegalEscape,
    /// `\NNN`, `\x`, `\u` or `\U` without enough digits.
    IllegalNumericEscape,
    /// `/…/` or `|…|` quoting where only `"…"` is allowed.
    InvalidQuote,
    /// An escape that is well-formed but out of range (e.g. `\777`).
    InvalidQuoted,
    /// Byte escapes that do not form UTF-8 (e.g. `"\xff"`).
    InvalidUtf8,
    /// A NUL character.
    UnexpectedNull,
}

impl fmt::Display for SyntaxErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyntaxErrorKind::ExpectedField => "expected field",
            SyntaxErrorKind::ExpectedOperator => "expected operator (==, != or ~=)",
            SyntaxErrorKind::ExpectedValue => "expected value",
            SyntaxErrorKind::ExpectedSeparator => "expected ',' or end of filter",
            SyntaxErrorKind::UnsupportedOperator => "unsupported operator",
            SyntaxErrorKind::UnterminatedQuote => "quoted literal not terminated",
            SyntaxErrorKind::IllegalEscape => "illegal escape sequence",
            SyntaxErrorKind::IllegalNumericEscape => "illegal numeric escape sequence",
            SyntaxErrorKind::InvalidQuote => {
                "invalid quote: only \"…\" here (/…/ and |…| are for ~= values)"
            }
            SyntaxErrorKind::InvalidQuoted => "invalid escape in quoted string",
            SyntaxErrorKind::InvalidUtf8 => "quoted string is not valid UTF-8",
            SyntaxErrorKind::UnexpectedNull => "unexpected null",
        })
    }
}

// ---------------------------------------------------------------------------
// Scanner: containerd's token rules, with the "value expected" state passed in
// by the parser instead of kept in the scanner.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Eof,
    Field,
    Value,
    Quoted,
    /// `,` or `.`
    Separator,
    /// A run of `=`, `!`, `~`.
    Operator,
    /// A character that starts no token here.
    Unexpected,
    Illegal(SyntaxErrorKind),
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    tok: Tok,
    pos: usize,
    text: &'a str,
}

struct Scanner<'a> {
    input: &'a str,
    pos: usize,
}

fn is_field_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_operator_char(c: char) -> bool {
    matches!(c, '=' | '!' | '~')
}

fn is_quote_char(c: char) -> bool {
    matches!(c, '"' | '/' | '|')
}

/// Go's `unicode.IsLetter|IsDigit|IsNumber|IsGraphic|IsPunct`, less `,` and
/// white space: categories L, M, N, P, S. Rust's std has no category tables,
/// so this rejects controls (Cc), format characters (Cf), private use (Co)
/// and noncharacters; other unassigned code points are accepted.
fn is_value_char(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control() && !is_format(c) && !is_private_or_nonchar(c)
}

/// General category Cf, Unicode 15.
fn is_format(c: char) -> bool {
    matches!(c as u32,
        0x00AD
        | 0x0600..=0x0605
        | 0x061C
        | 0x06DD
        | 0x070F
        | 0x0890..=0x0891
        | 0x08E2
        | 0x180E
        | 0x200B..=0x200F
        | 0x202A..=0x202E
        | 0x2060..=0x2064
        | 0x2066..=0x206F
        | 0xFEFF
        | 0xFFF9..=0xFFFB
        | 0x110BD
        | 0x110CD
        | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A
        | 0xE0001
        | 0xE0020..=0xE007F)
}

fn is_private_or_nonchar(c: char) -> bool {
    let u = c as u32;
    matches!(u, 0xE000..=0xF8FF | 0xF0000..=0xFFFFD | 0x100000..=0x10FFFD | 0xFDD0..=0xFDEF)
        || (u & 0xFFFE) == 0xFFFE
}

fn digit_val(c: Option<char>) -> u32 {
    c.and_then(|c| c.to_digit(16)).unwrap_or(16)
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<char> {
        self.input[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn bump_while(&mut self, f: fn(char) -> bool) {
        while self.peek().is_some_and(f) {
            self.bump();
        }
    }

    /// Scans one token, skipping white space first. `value` is true right
    /// after an operator, where a bare run of characters is a value.
    fn scan(&mut self, value: bool) -> Token<'a> {
        self.bump_while(char::is_whitespace);
        let pos = self.pos;
        let tok = match self.bump() {
            None => Tok::Eof,
            Some('\0') => Tok::Illegal(SyntaxErrorKind::UnexpectedNull),
            Some(c) if is_quote_char(c) => match self.scan_quoted(c) {
                Ok(()) => Tok::Quoted,
                Err(kind) => Tok::Illegal(kind),
            },
            Some(',' | '.') => Tok::Separator,
            Some(c) if is_operator_char(c) => {
                self.bump_while(is_operator_char);
                Tok::Operator
            }
            // containerd takes the first character of a value unchecked.
            Some(_) if value => {
                self.bump_while(is_value_char);
                Tok::Value
            }
            Some(c) if is_field_char(c) => {
                self.bump_while(is_field_char);
                Tok::Field
            }
            Some(_) => Tok::Unexpected,
        };
        Token {
            tok,
            pos,
            text: &self.input[pos..self.pos],
        }
    }

    /// Like `bump`, noting a NUL as the error if none was noted yet.
    fn bump_quoted(&mut self, err: &mut Option<SyntaxErrorKind>) -> Option<char> {
        let c = self.bump();
        if c == Some('\0') {
            err.get_or_insert(SyntaxErrorKind::UnexpectedNull);
        }
        c
    }

    /// Checks a quoted literal up to its closing `quote` (already consumed the
    /// opening one). Like containerd, an illegal escape does not stop the
    /// scan; the first problem found is the error.
    fn scan_quoted(&mut self, quote: char) -> Result<(), SyntaxErrorKind> {
        let mut err = None;
        let mut ch = self.bump_quoted(&mut err);
        loop {
            match ch {
                Some(c) if c == quote => return err.map_or(Ok(()), Err),
                None | Some('\n' | '\0') => {
                    return Err(err.unwrap_or(SyntaxErrorKind::UnterminatedQuote))
                }
                Some('\\') => ch = self.scan_escape(quote, &mut err),
                Some(_) => ch = self.bump_quoted(&mut err),
            }
        }
    }

    /// Checks the escape after a backslash; returns the next character.
    fn scan_escape(&mut self, quote: char, err: &mut Option<SyntaxErrorKind>) -> Option<char> {
        let c = self.bump_quoted(err);
        match c {
            Some('a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v' | '\\') => self.bump_quoted(err),
            Some(c) if c == quote => self.bump_quoted(err),
            Some('0'..='7') => self.scan_digits(c, 8, 3, err),
            Some('x') => {
                let first = self.bump_quoted(err);
                self.scan_digits(first, 16, 2, err)
            }
            Some('u') => {
                let first = self.bump_quoted(err);
                self.scan_digits(first, 16, 4, err)
            }
            Some('U') => {
                let first = self.bump_quoted(err);
                self.scan_digits(first, 16, 8, err)
            }
            _ => {
                err.get_or_insert(SyntaxErrorKind::IllegalEscape);
                c
            }
        }
    }

    fn scan_digits(
        &mut self,
        mut ch: Option<char>,
        base: u32,
        mut n: u32,
        err: &mut Option<SyntaxErrorKind>,
    ) -> Option<char> {
        while n > 0 && digit_val(ch) < base {
            ch = self.bump_quoted(err);
            n -= 1;
        }
        if n > 0 {
            err.get_or_insert(SyntaxErrorKind::IllegalNumericEscape);
        }
        ch
    }
}

/// Decodes a quoted literal that the scanner accepted (Go `strconv.Unquote`
/// rules, with `/` and `|` as further double-quote-like delimiters).
fn unquote(text: &str) -> Result<String, SyntaxErrorKind> {
    let quote = text.chars().next().ok_or(SyntaxErrorKind::InvalidQuoted)?;
    let inner = text[quote.len_utf8()..]
        .strip_suffix(quote)
        .ok_or(SyntaxErrorKind::InvalidQuoted)?;
    let mut out = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    let mut buf = [0u8; 4];
    while let Some(c) = chars.next() {
        if c == quote {
            return Err(SyntaxErrorKind::InvalidQuoted);
        }
        if c != '\\' {
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let e = chars.next().ok_or(SyntaxErrorKind::InvalidQuoted)?;
        match e {
            'a' => out.push(0x07),
            'b' => out.push(0x08),
            'f' => out.push(0x0C),
            'n' => out.push(b'\n'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            'v' => out.push(0x0B),
            '\\' => out.push(b'\\'),
            '"' | '/' | '|' if e == quote => {
                out.extend_from_slice(e.encode_utf8(&mut buf).as_bytes());
            }
            // A single byte, which need not be UTF-8 on its own.
            'x' => {
                let v = take_digits(&mut chars, 16, 2)?;
                out.push(u8::try_from(v).map_err(|_| SyntaxErrorKind::InvalidQuoted)?);
            }
            // Three octal digits, also a single byte: `\400` and up are errors.
            '0'..='7' => {
                let v = (u32::from(e) - u32::from('0')) * 64 + take_digits(&mut chars, 8, 2)?;
                out.push(u8::try_from(v).map_err(|_| SyntaxErrorKind::InvalidQuoted)?);
            }
            'u' | 'U' => {
                let v = take_digits(&mut chars, 16, if e == 'u' { 4 } else { 8 })?;
                if v > 0x10FFFF {
                    return Err(SyntaxErrorKind::InvalidQuoted);
                }
                // Go encodes a surrogate as U+FFFD.
                let c = char::from_u32(v).unwrap_or(char::REPLACEMENT_CHARACTER);
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            _ => return Err(SyntaxErrorKind::InvalidQuoted),
        }
    }
    String::from_utf8(out).map_err(|_| SyntaxErrorKind::InvalidUtf8)
}

/// Reads exactly `n` digits of `radix` (n ≤ 8, so the value fits in u32).
fn take_digits(
    chars: &mut std::str::Chars<'_>,
    radix: u32,
    n: usize,
) -> Result<u32, SyntaxErrorKind> {
    let mut v = 0u32;
    for _ in 0..n {
        let d = chars
            .next()
            .and_then(|c| c.to_digit(radix))
            .ok_or(SyntaxErrorKind::InvalidQuoted)?;
        v = v * radix + d;
    }
    Ok(v)
}

// ---------------------------------------------------------------------------
// Parser: containerd's recursive descent, one filter string at a time.

struct Parser<'a> {
    input: &'a str,
    sc: Scanner<'a>,
    /// `~=` selectors of the whole list so far, this string's included.
    regexes: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Operator {
    Equal,
    NotEqual,
    Matches,
}

impl<'a> Parser<'a> {
    /// `regexes`: the `~=` selectors of the list's earlier strings.
    fn new(input: &'a str, regexes: usize) -> Self {
        Parser {
            input,
            sc: Scanner { input, pos: 0 },
            regexes,
        }
    }

    fn error(&self, pos: usize, kind: SyntaxErrorKind, found: &str) -> FilterError {
        FilterError::Syntax {
            filter: self.input.to_owned(),
            pos,
            kind,
            found: (!found.is_empty()).then(|| found.to_owned()),
        }
    }

    /// An error for a token that is not what `expected` names.
    fn unexpected(&self, t: Token<'_>, expected: SyntaxErrorKind) -> FilterError {
        match t.tok {
            Tok::Illegal(kind) => self.error(t.pos, kind, t.text),
            _ => self.error(t.pos, expected, t.text),
        }
    }

    fn filter(&mut self) -> Result<Group, FilterError> {
        // Only the exact empty string matches everything; " " is an error.
        if self.input.is_empty() {
            return Ok(Vec::new());
        }
        let mut group = vec![self.selector()?];
        // Looks at the very next character: no white space is skipped here.
        loop {
            let pos = self.sc.pos;
            match self.sc.bump() {
                None => return Ok(group),
                Some(',') => group.push(self.selector()?),
                Some(c) => {
                    let kind = if c == '\0' {
                        SyntaxErrorKind::UnexpectedNull
                    } else {
                        SyntaxErrorKind::ExpectedSeparator
                    };
                    return Err(self.error(pos, kind, &self.input[pos..self.sc.pos]));
                }
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let path = self.fieldpath()?;
        if matches!(self.sc.peek(), None | Some(',')) {
            return Ok(Selector {
                path,
                op: Op::Present,
            });
        }
        let op = self.operator()?;
        let t = self.sc.scan(true);
        let value = match t.tok {
            Tok::Value => t.text.to_owned(),
            Tok::Quoted => self.unquote(t, op == Operator::Matches)?,
            _ => return Err(self.unexpected(t, SyntaxErrorKind::ExpectedValue)),
        };
        let op = match op {
            Operator::Equal => Op::Equal(value),
            Operator::NotEqual => Op::NotEqual(value),
            Operator::Matches => match self.regex(&value, t.pos)? {
                Ok(re) => Op::Matches(re),
                Err(source) => {
                    return Err(FilterError::Regex {
                        filter: self.input.to_owned(),
                        pos: t.pos,
                        pattern: value,
                        source,
                    })
                }
            },
        };
        Ok(Selector { path, op })
    }

    /// Compiles the pattern of a `~=` selector at `pos`, within the limits:
    /// the outer error is the regex count, the inner the crate's.
    fn regex(
        &mut self,
        pattern: &str,
        pos: usize,
    ) -> Result<Result<Regex, regex::Error>, FilterError> {
        self.regexes += 1;
        if self.regexes > MAX_REGEXES {
            return Err(FilterError::TooManyRegexes {
                filter: self.input.to_owned(),
                pos,
            });
        }
        Ok(RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
            .build())
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, FilterError> {
        let mut path = vec![self.field()?];
        while self.sc.peek() == Some('.') {
            self.sc.bump();
            path.push(self.field()?);
        }
        Ok(path)
    }

    fn field(&mut self) -> Result<String, FilterError> {
        let t = self.sc.scan(false);
        match t.tok {
            Tok::Field => Ok(t.text.to_owned()),
            Tok::Quoted => self.unquote(t, false),
            _ => Err(self.unexpected(t, SyntaxErrorKind::ExpectedField)),
        }
    }

    fn operator(&mut self) -> Result<Operator, FilterError> {
        let t = self.sc.scan(false);
        match (t.tok, t.text) {
            (Tok::Operator, "==") => Ok(Operator::Equal),
            (Tok::Operator, "!=") => Ok(Operator::NotEqual),
            (Tok::Operator, "~=") => Ok(Operator::Matches),
            (Tok::Operator, _) => {
                Err(self.error(t.pos, SyntaxErrorKind::UnsupportedOperator, t.text))
            }
            _ => Err(self.unexpected(t, SyntaxErrorKind::ExpectedOperator)),
        }
    }

    fn unquote(&self, t: Token<'_>, allow_alt_quotes: bool) -> Result<String, FilterError> {
        if !allow_alt_quotes && !t.text.starts_with('"') {
            return Err(self.error(t.pos, SyntaxErrorKind::InvalidQuote, t.text));
        }
        unquote(t.text).map_err(|kind| self.error(t.pos, kind, t.text))
    }
}

#[cfg(test)]
mod tests {
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
        assert!(msg("name~=(")
            .starts_with(r#"filter "name~=(" at 6: invalid regular expression "(": "#));
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

    // -- limits -----------------------------------------------------------

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
            msg.contains("regular expression 17 ")
                && msg.contains("limit is 16 regular expressions"),
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

    /// Odd inputs give a result or an error inside the string, never a panic.
    #[test]
    fn never_panics_on_odd_input() {
        const ALPHABET: &[char] = &[
            'a', 'Z', '_', '1', '.', ',', '=', '!', '~', '"', '/', '|', '\\', 'x', 'u', '0', '7',
            ' ', '\n', '\0', 'é', '牛', '\u{200b}', '(', '[', '*',
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
}
