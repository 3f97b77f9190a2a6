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
mod limit_tests;
#[cfg(test)]
mod tests;
