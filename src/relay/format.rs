//! Message formatting between WhatsApp markup and Matrix HTML, both ways.
//!
//! * WhatsApp -> Matrix ([`whatsapp_to_html`], [`whatsapp_to_matrix`]): a small parser for
//!   WhatsApp's markup (`*bold*`, `_italic_`, `~strike~`, `` `code` ``, ```` ```block``` ````,
//!   `> ` quotes, `- `/`* `/`• ` and `1. ` lists) that follows WhatsApp's own rules for when
//!   a marker counts, producing escaped `org.matrix.custom.html`.
//! * Matrix -> WhatsApp ([`matrix_to_whatsapp`]): the event's HTML is parsed with a real
//!   HTML5 parser (`ruma-html`, on html5ever) and the tree is walked, collapsing whitespace
//!   like a browser and writing WhatsApp markup.
//!
//! Both directions are total: any input gives an output, nothing panics.
//!
//! Round trips are exact for text WhatsApp users write (formatting, quotes, lists, runs of
//! spaces, blank lines), with these deliberate normalisations: `* ` and `• ` bullets come
//! back as `- `, a single-line ```` ```x``` ```` inside a line comes back as `` `x` ``, and
//! empty lines after a final list or quote are dropped (WhatsApp trims messages anyway).

use ruma_html::{Html, NodeData, NodeRef};

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

/// Escapes text for Matrix HTML (`&`, `<`, `>`, `"`, `'`).
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '"' => out.push_str("&quot;"),
        '\'' => out.push_str("&#39;"),
        // A parser drops a byte order mark at the very start of the input.
        '\u{feff}' => out.push_str("&#xfeff;"),
        _ => out.push(c),
    }
}

// ---------------------------------------------------------------------------------------
// WhatsApp -> Matrix
// ---------------------------------------------------------------------------------------

/// WhatsApp text -> HTML formatted body (`org.matrix.custom.html`) for Matrix.
///
/// The plain body to send alongside is the text as written (markup characters kept, as
/// Matrix clients show plain bodies as-is); [`whatsapp_to_matrix`] returns both.
///
/// `*bold*` -> `<strong>`, `_italic_` -> `<em>`, `~strike~` -> `<del>`, `` `code` `` ->
/// `<code>`, ```` ```multi-line block``` ```` -> `<pre><code>` (a single-line one inside
/// a line -> `<code>`), lines starting with `> ` -> `<blockquote>`, consecutive `- `, `* `,
/// `• ` lines -> `<ul>`, `1. ` lines -> `<ol>` (a new list where the numbering jumps),
/// newlines -> `<br>` (not inside `pre`), spaces a browser would collapse -> `&nbsp;`,
/// everything else HTML-escaped.
///
/// A marker counts as WhatsApp counts it: an opening marker is at the start or after
/// whitespace/punctuation and followed by a non-space; a closing marker is preceded by a
/// non-space and followed by the end, whitespace or punctuation. Markers don't span lines
/// (except ```` ``` ````), nothing is parsed inside code, `2*3*4` and `snake_case_words`
/// stay literal, and URLs are never formatted.
pub fn whatsapp_to_html(text: &str) -> String {
    WaRenderer::new(text).render().0
}

/// WhatsApp text -> (plain body, HTML formatted body) for a Matrix `m.text` event.
///
/// The HTML is `None` when the text has no formatting at all (then the plain body alone
/// renders the same).
pub fn whatsapp_to_matrix(text: &str) -> (String, Option<String>) {
    let (html, formatted) = WaRenderer::new(text).render();
    (text.to_owned(), formatted.then_some(html))
}

/// The inline markers, in the order of `WaRenderer::closers`.
const MARKERS: [char; 4] = ['*', '_', '~', '`'];

/// How deep inline formatting may nest before markers are taken literally (keeps the
/// recursion bounded on adversarial input).
const MAX_INLINE_DEPTH: usize = 16;

/// What a logical line is, by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    Text,
    /// The whole line is one ```` ``` ```` block.
    Pre,
    Quote,
    Bullet,
    Ordered(u64),
}

#[derive(Debug, Clone, Copy)]
struct Line {
    kind: LineKind,
    /// Whole logical line, `start..end` in chars.
    start: usize,
    end: usize,
    /// Content (after the prefix).
    content: usize,
}

struct WaRenderer {
    chars: Vec<char>,
    /// `in_triple[i]`: char `i` belongs to a ```` ``` ```` span (markers included).
    in_triple: Vec<bool>,
    /// Triple spans: (index of the opening ```` ``` ````, index of the closing one).
    triples: Vec<(usize, usize)>,
    /// For each marker of [`MARKERS`], the sorted positions where it may close.
    closers: [Vec<usize>; 4],
    /// Whether anything other than text and line breaks was produced.
    formatted: bool,
}

fn is_boundary(c: char) -> bool {
    !c.is_alphanumeric()
}

fn marker_index(c: char) -> Option<usize> {
    MARKERS.iter().position(|&m| m == c)
}

impl WaRenderer {
    fn new(text: &str) -> Self {
        let chars: Vec<char> = text.replace("\r\n", "\n").chars().collect();
        let n = chars.len();
        let is_triple_at = |i: usize| i + 3 <= n && chars[i..i + 3].iter().all(|&c| c == '`');

        // Pair ``` greedily, left to right; a block needs some non-blank content.
        let starts: Vec<usize> = (0..n).filter(|&i| is_triple_at(i)).collect();
        let mut triples = Vec::new();
        let mut in_triple = vec![false; n];
        let mut a = 0;
        while a < starts.len() {
            let open = starts[a];
            let close = starts[a + 1..]
                .iter()
                .copied()
                .find(|&s| s >= open + 3)
                .filter(|&s| chars[open + 3..s].iter().any(|c| !c.is_whitespace()));
            match close {
                Some(close) => {
                    triples.push((open, close));
                    in_triple[open..close + 3]
                        .iter_mut()
                        .for_each(|b| *b = true);
                    a = starts.partition_point(|&s| s < close + 3);
                }
                None => a += 1,
            }
        }

        let mut renderer = Self {
            chars,
            in_triple,
            triples,
            closers: Default::default(),
            formatted: false,
        };
        let lines = renderer.logical_lines();
        for &(start, end) in &lines {
            for j in start..end {
                let c = renderer.chars[j];
                if let Some(m) = marker_index(c) {
                    if renderer.can_close(j, start, end) {
                        renderer.closers[m].push(j);
                    }
                }
            }
        }
        renderer
    }

    /// Splits at newlines outside ```` ``` ```` spans: `(start, end)` char ranges.
    fn logical_lines(&self) -> Vec<(usize, usize)> {
        let mut lines = Vec::new();
        let mut start = 0;
        for (i, &c) in self.chars.iter().enumerate() {
            if c == '\n' && !self.in_triple[i] {
                lines.push((start, i));
                start = i + 1;
            }
        }
        lines.push((start, self.chars.len()));
        lines
    }

    fn triple_at(&self, i: usize) -> Option<usize> {
        self.triples
            .binary_search_by_key(&i, |&(open, _)| open)
            .ok()
            .map(|k| self.triples[k].1)
    }

    fn can_open(&self, i: usize, content_start: usize, line_end: usize) -> bool {
        !self.in_triple[i]
            && (i == content_start || is_boundary(self.chars[i - 1]))
            && i + 1 < line_end
            && !self.chars[i + 1].is_whitespace()
    }

    fn can_close(&self, j: usize, line_start: usize, line_end: usize) -> bool {
        !self.in_triple[j]
            && j > line_start
            && !self.chars[j - 1].is_whitespace()
            && (j + 1 == line_end || is_boundary(self.chars[j + 1]))
    }

    fn classify(&self, start: usize, end: usize) -> Line {
        let c = &self.chars[start..end];
        let line = |kind, content| Line {
            kind,
            start,
            end,
            content,
        };
        if let Some(close) = self.triple_at(start) {
            if close + 3 == end {
                return line(LineKind::Pre, start);
            }
        }
        match c {
            ['>', ' ', ..] => return line(LineKind::Quote, start + 2),
            ['-' | '*' | '•', ' ', ..] => return line(LineKind::Bullet, start + 2),
            _ => {}
        }
        let digits = c.iter().take_while(|d| d.is_ascii_digit()).count();
        if (1..=9).contains(&digits)
            && (digits == 1 || c[0] != '0')
            && c.get(digits) == Some(&'.')
            && c.get(digits + 1) == Some(&' ')
        {
            let number: u64 = c[..digits].iter().fold(0, |acc, d| {
                acc * 10 + u64::from(d.to_digit(10).unwrap_or(0))
            });
            return line(LineKind::Ordered(number), start + digits + 2);
        }
        line(LineKind::Text, start)
    }

    fn render(mut self) -> (String, bool) {
        let lines: Vec<Line> = self
            .logical_lines()
            .into_iter()
            .map(|(s, e)| self.classify(s, e))
            .collect();

        // Group consecutive lines of the same kind (ordered lists: while the numbering
        // follows on).
        let mut groups: Vec<Vec<Line>> = Vec::new();
        for line in lines {
            let joins = groups.last().and_then(|g| g.last()).is_some_and(|prev| {
                match (prev.kind, line.kind) {
                    (LineKind::Ordered(a), LineKind::Ordered(b)) => a.checked_add(1) == Some(b),
                    (LineKind::Pre, _) | (_, LineKind::Pre) => false,
                    (a, b) => a == b,
                }
            });
            match groups.last_mut() {
                Some(group) if joins => group.push(line),
                _ => groups.push(vec![line]),
            }
        }

        let mut out = String::new();
        let count = groups.len();
        for (g, group) in groups.iter().enumerate() {
            let next_is_block = g + 1 < count;
            match group.first().map(|l| l.kind) {
                Some(LineKind::Text) => {
                    self.lines_joined(group, true, &mut out);
                    // A browser swallows a <br> right before a block: keep the empty line.
                    if next_is_block && group.last().is_some_and(|l| l.start == l.end) {
                        out.push_str("<br>");
                    }
                }
                Some(LineKind::Pre) => {
                    for line in group {
                        self.inline(line.start, line.end, line, 0, true, &mut out);
                    }
                }
                Some(LineKind::Quote) => {
                    self.formatted = true;
                    out.push_str("<blockquote>");
                    self.lines_joined(group, false, &mut out);
                    if group.last().is_some_and(|l| l.content == l.end) {
                        out.push_str("<br>");
                    }
                    out.push_str("</blockquote>");
                }
                Some(LineKind::Bullet) => {
                    self.formatted = true;
                    out.push_str("<ul>");
                    self.list_items(group, &mut out);
                    out.push_str("</ul>");
                }
                Some(LineKind::Ordered(first)) => {
                    self.formatted = true;
                    if first == 1 {
                        out.push_str("<ol>");
                    } else {
                        out.push_str(&format!("<ol start=\"{first}\">"));
                    }
                    self.list_items(group, &mut out);
                    out.push_str("</ol>");
                }
                None => {}
            }
        }
        (out, self.formatted)
    }

    fn lines_joined(&mut self, group: &[Line], block_ok: bool, out: &mut String) {
        for (k, line) in group.iter().enumerate() {
            if k > 0 {
                out.push_str("<br>");
            }
            self.inline(line.content, line.end, line, 0, block_ok, out);
        }
    }

    fn list_items(&mut self, group: &[Line], out: &mut String) {
        for line in group {
            out.push_str("<li>");
            self.inline(line.content, line.end, line, 0, false, out);
            out.push_str("</li>");
        }
    }

    /// Renders `start..end` of `line` (a range inside its content).
    fn inline(
        &mut self,
        start: usize,
        end: usize,
        line: &Line,
        depth: usize,
        block_ok: bool,
        out: &mut String,
    ) {
        let mut i = start;
        while i < end {
            if let Some(close) = self.triple_at(i).filter(|&c| c + 3 <= end) {
                self.triple(i, close, line, block_ok, out);
                i = close + 3;
                continue;
            }
            let c = self.chars[i];
            if let Some(m) = marker_index(c) {
                if depth < MAX_INLINE_DEPTH && self.can_open(i, line.content, line.end) {
                    let closers = &self.closers[m];
                    let k = closers.partition_point(|&p| p < i + 2);
                    let found = closers
                        .get(k)
                        .copied()
                        .filter(|&j| j < end && self.chars[i + 1..j].iter().any(|&x| x != c));
                    if let Some(j) = found {
                        self.formatted = true;
                        if c == '`' {
                            out.push_str("<code>");
                            for k in i + 1..j {
                                self.push_text_char(k, line, out);
                            }
                            out.push_str("</code>");
                        } else {
                            let tag = match c {
                                '*' => "strong",
                                '_' => "em",
                                _ => "del",
                            };
                            out.push_str(&format!("<{tag}>"));
                            self.inline(i + 1, j, line, depth + 1, false, out);
                            out.push_str(&format!("</{tag}>"));
                        }
                        i = j + 1;
                        continue;
                    }
                }
            }
            if let Some(url_end) = self.url_at(i, line.content, end) {
                for k in i..url_end {
                    self.push_text_char(k, line, out);
                }
                i = url_end;
                continue;
            }
            self.push_text_char(i, line, out);
            i += 1;
        }
    }

    /// If an `http(s)://` URL starts at `i`, where it ends (whitespace, `end` or a
    /// ```` ``` ```` block).
    fn url_at(&self, i: usize, content_start: usize, end: usize) -> Option<usize> {
        if i > content_start && self.chars[i - 1].is_alphanumeric() {
            return None;
        }
        let rest = &self.chars[i..end];
        let starts_with = |p: &str| {
            rest.len() >= p.len()
                && rest
                    .iter()
                    .zip(p.chars())
                    .all(|(a, b)| a.eq_ignore_ascii_case(&b))
        };
        if !(starts_with("http://") || starts_with("https://")) {
            return None;
        }
        let len = rest
            .iter()
            .enumerate()
            .position(|(k, c)| c.is_whitespace() || self.in_triple[i + k])
            .unwrap_or(rest.len());
        Some(i + len)
    }

    fn triple(&mut self, open: usize, close: usize, line: &Line, block_ok: bool, out: &mut String) {
        self.formatted = true;
        let content = &self.chars[open + 3..close];
        let whole_line = open == line.start && close + 3 == line.end;
        if content.contains(&'\n') || (block_ok && whole_line) {
            out.push_str("<pre><code>");
            for &c in content {
                push_escaped(out, c);
            }
            out.push_str("</code></pre>");
        } else {
            out.push_str("<code>");
            for k in open + 3..close {
                self.push_text_char(k, line, out);
            }
            out.push_str("</code>");
        }
    }

    /// Escapes char `k`; a space a browser would collapse (at the start or end of the line,
    /// or after another space) becomes `&nbsp;`.
    fn push_text_char(&self, k: usize, line: &Line, out: &mut String) {
        let c = self.chars[k];
        if c == ' ' && (k == line.content || self.chars[k - 1] == ' ' || k + 1 == line.end) {
            out.push_str("&nbsp;");
        } else {
            push_escaped(out, c);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Matrix -> WhatsApp
// ---------------------------------------------------------------------------------------

/// Matrix message -> WhatsApp text.
///
/// `html` is the event's `formatted_body` (`org.matrix.custom.html`) if any, `body` the
/// plain body. The HTML is parsed (html5ever via `ruma-html`) and walked:
/// `strong`/`b` -> `*x*`, `em`/`i` -> `_x_`, `del`/`s`/`strike` -> `~x~`, `code` -> `` `x` ``,
/// `pre` -> ```` ```x``` ````, `blockquote` -> `> ` on each line, `ul`/`li` -> `- `,
/// `ol`/`li` -> `1. `, `2. `… (`start` and `value` respected), `br` -> newline, `div` ->
/// its own lines, `p` -> paragraphs separated by an empty line (as displayed), `h1`..`h6`
/// -> `*x*` on its own line, `a href` -> `text (url)` unless the text is the URL (a
/// matrix.to user pill -> just the text), `img` -> its alt text, `mx-reply` -> dropped,
/// spoilers -> the text, tables -> cells separated by ` | `, one row per line, `hr` ->
/// `---`; `script`, `style` and the like are dropped with their content, any other element
/// gives its content. Whitespace is collapsed as a browser would outside `pre`; `&nbsp;`
/// becomes a plain space. Markers never span lines, and whitespace inside a formatted run
/// is moved outside the markers (`<b>a </b>` -> `*a* `), so WhatsApp renders them.
///
/// Without HTML (or when it renders to nothing) the body is returned as-is, except that a
/// reply fallback (leading `> ` lines followed by an empty line) is removed when
/// `is_reply` is true.
pub fn matrix_to_whatsapp(body: &str, html: Option<&str>, is_reply: bool) -> String {
    if let Some(text) = html
        .filter(|h| !h.trim().is_empty())
        .and_then(html_to_whatsapp_guarded)
    {
        if !text.trim().is_empty() || body.trim().is_empty() {
            return text;
        }
    }
    if is_reply {
        strip_reply_fallback(body).to_owned()
    } else {
        body.to_owned()
    }
}

/// Removes a plain-text reply fallback: leading lines starting with `> ` (or just `>`),
/// then an empty line. Anything else is returned unchanged.
fn strip_reply_fallback(body: &str) -> &str {
    if !body.starts_with("> ") {
        return body;
    }
    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        let bare = line.strip_suffix('\n').unwrap_or(line);
        let bare = bare.strip_suffix('\r').unwrap_or(bare);
        if bare.starts_with("> ") || bare == ">" {
            offset += line.len();
        } else if bare.is_empty() && line.ends_with('\n') {
            return &body[offset + line.len()..];
        } else {
            return body;
        }
    }
    body
}

/// Elements dropped together with their content.
const DROPPED: &[&str] = &[
    "mx-reply", "script", "style", "template", "head", "title", "noscript", "iframe", "object",
    "embed", "svg", "math", "audio", "video", "canvas", "select", "button",
];

/// Elements laid out as blocks (on their own lines) with no special rendering.
const BLOCKS: &[&str] = &[
    "div",
    "address",
    "article",
    "aside",
    "center",
    "dd",
    "dl",
    "dt",
    "details",
    "summary",
    "fieldset",
    "figure",
    "figcaption",
    "footer",
    "header",
    "main",
    "nav",
    "section",
    "table",
    "thead",
    "tbody",
    "tfoot",
    "tr",
    "caption",
    "legend",
    "form",
];

/// Nesting below which the walk stops interpreting elements and only collects text.
const MAX_HTML_DEPTH: usize = 96;

/// More tags than this and the HTML is not parsed at all (the plain body is used): no
/// real message comes close, and html5ever's cost grows with nesting depth.
const MAX_HTML_TAGS: usize = 5000;

/// Up to this many tags, the tree is shallow enough to parse and drop on any thread's
/// stack (html5ever and `ruma-html` recurse over the tree depth, e.g. when dropping it).
const SMALL_HTML_TAGS: usize = 500;

/// Stack for converting larger HTML on a helper thread (reserved, not committed).
const BIG_HTML_STACK: usize = 64 << 20;

/// [`html_to_whatsapp`] with bounds on work and stack use; `None`: use the plain body.
fn html_to_whatsapp_guarded(html: &str) -> Option<String> {
    let tags = html.bytes().filter(|&b| b == b'<').count();
    if tags <= SMALL_HTML_TAGS {
        return Some(html_to_whatsapp(html));
    }
    if tags > MAX_HTML_TAGS {
        return None;
    }
    let html = html.to_owned();
    std::thread::Builder::new()
        .name("html-to-whatsapp".to_owned())
        .stack_size(BIG_HTML_STACK)
        .spawn(move || html_to_whatsapp(&html))
        .ok()?
        .join()
        .ok()
}

fn html_to_whatsapp(html: &str) -> String {
    let doc = Html::parse(html);
    let mut out = Out::default();
    for child in doc.children() {
        walk(&child, &mut out, 0);
    }
    out.finish()
}

fn element_name(node: &NodeRef) -> Option<&str> {
    node.as_element().map(|el| &*el.name.local)
}

fn attr(node: &NodeRef, name: &str) -> Option<String> {
    let el = node.as_element()?;
    let attrs = el.attrs.borrow();
    attrs
        .iter()
        .find(|a| &*a.name.local == name)
        .map(|a| a.value.to_string())
}

fn walk(node: &NodeRef, out: &mut Out, depth: usize) {
    match node.data() {
        NodeData::Text(text) => out.text(&text.borrow()),
        NodeData::Element(_) if depth > MAX_HTML_DEPTH => out.text(&text_content(node, false)),
        NodeData::Element(_) => walk_element(node, out, depth),
        _ => {}
    }
}

fn walk_children(node: &NodeRef, out: &mut Out, depth: usize) {
    for child in node.children() {
        walk(&child, out, depth + 1);
    }
}

fn walk_element(node: &NodeRef, out: &mut Out, depth: usize) {
    let Some(name) = element_name(node) else {
        return;
    };
    match name {
        _ if DROPPED.contains(&name) => {}
        "br" => out.line_break(),
        "strong" | "b" => out.mark(node, "*", depth),
        "em" | "i" => out.mark(node, "_", depth),
        "del" | "s" | "strike" => out.mark(node, "~", depth),
        "code" | "kbd" | "samp" | "tt" => {
            if out.code_depth > 0 {
                walk_children(node, out, depth);
            } else {
                let marker = if text_content(node, false).contains('`') {
                    "```"
                } else {
                    "`"
                };
                out.open(marker);
                out.code_depth += 1;
                walk_children(node, out, depth);
                out.code_depth -= 1;
                out.close();
            }
        }
        "pre" => {
            out.block_start(1);
            let mut code = text_content(node, true);
            if code.ends_with('\n') && !code.starts_with('\n') {
                code.pop();
            }
            if !code.trim().is_empty() {
                out.raw("```");
                out.raw(&code);
                out.raw("```");
            }
            out.block_end(1);
        }
        "blockquote" => {
            out.block_start(1);
            let inner = out.sub(node, depth);
            let lines: Vec<String> = inner.split('\n').map(|l| format!("> {l}")).collect();
            out.raw(&lines.join("\n"));
            out.block_end(1);
        }
        "ul" | "ol" | "menu" => list(node, name == "ol", out, depth),
        "li" => list_item(node, "- ", out, depth),
        "p" => {
            out.block_start(2);
            walk_children(node, out, depth);
            out.block_end(2);
        }
        "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
            out.block_start(1);
            out.mark(node, "*", depth);
            out.block_end(1);
        }
        "hr" => {
            out.block_start(1);
            out.raw("---");
            out.block_end(1);
        }
        "td" | "th" => {
            let mut prev = node.prev_sibling();
            while let Some(p) = prev {
                if p.as_element().is_some() {
                    if matches!(element_name(&p), Some("td" | "th")) {
                        out.text(" | ");
                    }
                    break;
                }
                prev = p.prev_sibling();
            }
            walk_children(node, out, depth);
        }
        "a" => link(node, out, depth),
        "img" => {
            if let Some(alt) = attr(node, "alt") {
                out.text(&alt);
            }
        }
        _ if BLOCKS.contains(&name) => {
            out.block_start(1);
            walk_children(node, out, depth);
            out.block_end(1);
        }
        _ => walk_children(node, out, depth),
    }
}

fn list(node: &NodeRef, ordered: bool, out: &mut Out, depth: usize) {
    out.block_start(1);
    let mut number: i64 = attr(node, "start")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1);
    for child in node.children() {
        if element_name(&child) == Some("li") {
            if let Some(value) = attr(&child, "value").and_then(|v| v.trim().parse().ok()) {
                number = value;
            }
            let prefix = if ordered {
                format!("{number}. ")
            } else {
                "- ".to_owned()
            };
            list_item(&child, &prefix, out, depth + 1);
            number = number.saturating_add(1);
        } else {
            walk(&child, out, depth + 1);
        }
    }
    out.block_end(1);
}

fn list_item(node: &NodeRef, prefix: &str, out: &mut Out, depth: usize) {
    out.block_start(1);
    let inner = out.sub(node, depth);
    // Continuation lines (nested lists, line breaks) are indented under the text, except
    // when the item holds a code block, whose lines must stay as they are.
    let indent = if has_descendant(node, "pre") {
        String::new()
    } else {
        " ".repeat(prefix.chars().count())
    };
    let mut text = String::from(prefix);
    for (k, line) in inner.split('\n').enumerate() {
        if k > 0 {
            text.push('\n');
            if !line.is_empty() {
                text.push_str(&indent);
            }
        }
        text.push_str(line);
    }
    out.raw(&text);
    out.block_end(1);
}

fn link(node: &NodeRef, out: &mut Out, depth: usize) {
    let href = attr(node, "href").unwrap_or_default();
    let href = href.trim();
    let text = collapse_whitespace(&text_content(node, false));
    walk_children(node, out, depth);
    if href.is_empty() || is_user_pill(href) || !is_safe_link(href) {
        return;
    }
    if text.is_empty() {
        out.text(href);
    } else if !same_link(&text, href) {
        out.text(&format!(" ({href})"));
    }
}

fn is_user_pill(href: &str) -> bool {
    let lower = href.to_ascii_lowercase();
    [
        "https://matrix.to/#/@",
        "https://matrix.to/#/%40",
        "matrix:u/",
    ]
    .iter()
    .any(|p| lower.starts_with(p))
}

fn is_safe_link(href: &str) -> bool {
    let lower = href.to_ascii_lowercase();
    !["javascript:", "data:", "vbscript:"]
        .iter()
        .any(|p| lower.starts_with(p))
}

fn same_link(text: &str, href: &str) -> bool {
    fn norm(s: &str) -> &str {
        let s = ["https://", "http://", "mailto:", "tel:"]
            .iter()
            .find_map(|p| {
                s.get(..p.len())
                    .filter(|head| head.eq_ignore_ascii_case(p))
                    .and_then(|_| s.get(p.len()..))
            })
            .unwrap_or(s);
        s.trim_end_matches('/')
    }
    norm(text).eq_ignore_ascii_case(norm(href))
}

fn collapse_whitespace(s: &str) -> String {
    s.split_ascii_whitespace().collect::<Vec<_>>().join(" ")
}

fn has_descendant(node: &NodeRef, name: &str) -> bool {
    let mut stack: Vec<NodeRef> = node.children().collect();
    while let Some(n) = stack.pop() {
        if element_name(&n) == Some(name) {
            return true;
        }
        stack.extend(n.children());
    }
    false
}

/// The text of a subtree (iterative, so any depth is fine); dropped elements are skipped,
/// `<br>` gives a newline when `breaks` is set, and `img` its alt text.
fn text_content(node: &NodeRef, breaks: bool) -> String {
    let mut text = String::new();
    let mut stack: Vec<NodeRef> = vec![node.clone()];
    while let Some(n) = stack.pop() {
        match n.data() {
            NodeData::Text(t) => text.push_str(&t.borrow()),
            NodeData::Element(_) => {
                let name = element_name(&n).unwrap_or_default();
                if DROPPED.contains(&name) {
                    continue;
                }
                match name {
                    "br" if breaks => text.push('\n'),
                    "img" => text.push_str(&attr(&n, "alt").unwrap_or_default()),
                    _ => {
                        let children: Vec<NodeRef> = n.children().collect();
                        stack.extend(children.into_iter().rev());
                    }
                }
            }
            _ => {}
        }
    }
    text
}

/// An inline marker (`*`, `_`, `~`, `` ` ``) currently open in the walk.
#[derive(Debug, Clone, Copy)]
struct Mark {
    marker: &'static str,
    /// Written to the output on the current line (markers open lazily, right before the
    /// first visible character, and close at line ends).
    emitted: bool,
    /// Same marker already open, or inside code: writes nothing.
    noop: bool,
}

/// WhatsApp text being written, with browser-like whitespace handling.
#[derive(Debug, Default)]
struct Out {
    buf: String,
    /// Collapsible whitespace seen since the last visible character.
    pending_space: bool,
    /// `&nbsp;` seen since the last visible character (never collapsed).
    pending_nbsp: usize,
    /// Newlines owed before the next content: 1 after a block, 2 after a paragraph.
    pending_break: usize,
    marks: Vec<Mark>,
    code_depth: usize,
}

impl Out {
    fn at_line_start(&self) -> bool {
        self.buf.is_empty() || self.buf.ends_with('\n')
    }

    fn flush_break(&mut self) {
        if self.pending_break > 0 {
            if !self.buf.is_empty() {
                let have = self
                    .buf
                    .chars()
                    .rev()
                    .take(self.pending_break)
                    .take_while(|&c| c == '\n')
                    .count();
                for _ in have..self.pending_break {
                    self.buf.push('\n');
                }
            }
            self.pending_break = 0;
            self.pending_space = false;
        }
    }

    /// Writes pending `&nbsp;`s, with a collapsible space before them (which a browser
    /// keeps, as it is not at the end of the line).
    fn flush_nbsp(&mut self) {
        if self.pending_nbsp > 0 {
            self.flush_break();
            if self.pending_space {
                self.buf.push(' ');
                self.pending_space = false;
            }
            for _ in 0..self.pending_nbsp {
                self.buf.push(' ');
            }
            self.pending_nbsp = 0;
        }
    }

    fn close_marks(&mut self) {
        for m in self.marks.iter_mut().rev() {
            if m.emitted {
                self.buf.push_str(m.marker);
                m.emitted = false;
            }
        }
    }

    fn text(&mut self, s: &str) {
        for c in s.chars() {
            match c {
                ' ' | '\t' | '\n' | '\r' | '\x0c' => {
                    if self.pending_break == 0 && !(self.at_line_start() && self.pending_nbsp == 0)
                    {
                        self.pending_space = true;
                    }
                }
                '\u{a0}' => {
                    self.flush_break();
                    self.pending_nbsp += 1;
                }
                _ => {
                    self.flush_break();
                    if self.pending_space {
                        self.buf.push(' ');
                        self.pending_space = false;
                    }
                    self.flush_nbsp();
                    for m in &mut self.marks {
                        if !m.noop && !m.emitted {
                            self.buf.push_str(m.marker);
                            m.emitted = true;
                        }
                    }
                    self.buf.push(c);
                }
            }
        }
    }

    /// Text already laid out (block content), written at the start of a line.
    fn raw(&mut self, s: &str) {
        self.buf.push_str(s);
    }

    fn line_break(&mut self) {
        self.flush_break();
        self.close_marks();
        self.flush_nbsp();
        self.pending_space = false;
        self.buf.push('\n');
    }

    fn block_start(&mut self, margin: usize) {
        self.close_marks();
        self.flush_nbsp();
        self.pending_space = false;
        let need = if self.at_line_start() { 0 } else { 1 };
        self.pending_break = self.pending_break.max(need).max(margin);
        if self.buf.is_empty() {
            self.pending_break = 0;
        }
        self.flush_break();
    }

    fn block_end(&mut self, margin: usize) {
        self.close_marks();
        self.flush_nbsp();
        self.pending_space = false;
        self.pending_break = self.pending_break.max(margin);
    }

    fn open(&mut self, marker: &'static str) {
        let noop = self.code_depth > 0 || self.marks.iter().any(|m| !m.noop && m.marker == marker);
        self.marks.push(Mark {
            marker,
            emitted: false,
            noop,
        });
    }

    fn close(&mut self) {
        if let Some(m) = self.marks.pop() {
            if m.emitted {
                self.buf.push_str(m.marker);
            }
        }
    }

    /// Wraps the children of `node` in `marker`.
    fn mark(&mut self, node: &NodeRef, marker: &'static str, depth: usize) {
        self.open(marker);
        walk_children(node, self, depth);
        self.close();
    }

    /// Renders the children of a block (quote, list item) on their own, inheriting the
    /// open markers; a trailing line break is dropped, as a browser does at a block end.
    fn sub(&self, node: &NodeRef, depth: usize) -> String {
        let mut sub = Out {
            marks: self
                .marks
                .iter()
                .map(|m| Mark {
                    emitted: false,
                    ..*m
                })
                .collect(),
            code_depth: self.code_depth,
            ..Out::default()
        };
        walk_children(node, &mut sub, depth);
        let mut text = sub.finish_inner();
        if text.ends_with('\n') {
            text.pop();
        }
        text
    }

    fn finish_inner(&mut self) -> String {
        self.close_marks();
        self.flush_nbsp();
        std::mem::take(&mut self.buf)
    }

    fn finish(mut self) -> String {
        self.finish_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escape() {
        assert_eq!(
            escape_html(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert_eq!(escape_html("plain"), "plain");
    }

    #[test]
    fn whatsapp_to_html_table() {
        let cases: &[(&str, &str)] = &[
            // plain, escaping, line breaks
            ("", ""),
            ("hello", "hello"),
            (
                "a < b & c > d \"q\" 'r'",
                "a &lt; b &amp; c &gt; d &quot;q&quot; &#39;r&#39;",
            ),
            ("<b>not html</b>", "&lt;b&gt;not html&lt;/b&gt;"),
            ("line 1\nline 2", "line 1<br>line 2"),
            ("a\r\nb", "a<br>b"),
            ("a\n\nb", "a<br><br>b"),
            // spaces a browser would collapse
            ("a  b", "a &nbsp;b"),
            ("  indented", "&nbsp;&nbsp;indented"),
            ("trailing ", "trailing&nbsp;"),
            // inline markers
            ("*bold*", "<strong>bold</strong>"),
            ("_italic_", "<em>italic</em>"),
            ("~strike~", "<del>strike</del>"),
            ("`code`", "<code>code</code>"),
            ("a *b* c", "a <strong>b</strong> c"),
            ("*two words*", "<strong>two words</strong>"),
            ("(*bold*)", "(<strong>bold</strong>)"),
            ("*bold*, _it_.", "<strong>bold</strong>, <em>it</em>."),
            ("*_both_*", "<strong><em>both</em></strong>"),
            ("_*both*_", "<em><strong>both</strong></em>"),
            ("*_~all~_*", "<strong><em><del>all</del></em></strong>"),
            ("*bold _and it_*", "<strong>bold <em>and it</em></strong>"),
            ("*a* *b*", "<strong>a</strong> <strong>b</strong>"),
            ("*a*b*", "<strong>a*b</strong>"),
            ("*<tag>*", "<strong>&lt;tag&gt;</strong>"),
            // literal: WhatsApp's rules
            ("2*3*4", "2*3*4"),
            ("snake_case_words", "snake_case_words"),
            ("a_b c_d", "a_b c_d"),
            ("* not bold*", "<ul><li>not bold*</li></ul>"),
            ("x * not bold*", "x * not bold*"),
            ("*not bold *", "*not bold *"),
            ("*a*b", "*a*b"),
            ("**", "**"),
            ("***", "***"),
            ("a ~ b ~ c", "a ~ b ~ c"),
            ("*unclosed", "*unclosed"),
            ("*multi\nline*", "*multi<br>line*"),
            ("5 * 3 = 15", "5 * 3 = 15"),
            ("~", "~"),
            ("_", "_"),
            // code: nothing parsed inside
            ("`*not bold*`", "<code>*not bold*</code>"),
            ("`a  b`", "<code>a &nbsp;b</code>"),
            ("use `x_y_z` here", "use <code>x_y_z</code> here"),
            ("```*raw* _x_```", "<pre><code>*raw* _x_</code></pre>"),
            (
                "```\nfn main() {\n    *x* <y>\n}\n```",
                "<pre><code>\nfn main() {\n    *x* &lt;y&gt;\n}\n</code></pre>",
            ),
            ("say ```hi``` now", "say <code>hi</code> now"),
            ("```a\nb``` then", "<pre><code>a\nb</code></pre> then"),
            (
                "before\n```x```\nafter",
                "before<pre><code>x</code></pre>after",
            ),
            ("``````", "``````"),
            ("```unclosed", "```unclosed"),
            ("*bold `code*` x*", "<strong>bold `code</strong>` x*"),
            // URLs are never formatted
            ("https://example.com/a_b_c", "https://example.com/a_b_c"),
            ("see https://x.org/_y_ ok", "see https://x.org/_y_ ok"),
            ("*https://x.org/*", "<strong>https://x.org/</strong>"),
            // quotes
            ("> quoted", "<blockquote>quoted</blockquote>"),
            ("> a\n> b", "<blockquote>a<br>b</blockquote>"),
            (
                "> *a*\nafter",
                "<blockquote><strong>a</strong></blockquote>after",
            ),
            ("before\n> q", "before<blockquote>q</blockquote>"),
            (">not a quote", "&gt;not a quote"),
            ("> ", "<blockquote><br></blockquote>"),
            ("a > b", "a &gt; b"),
            // lists
            ("- a\n- b", "<ul><li>a</li><li>b</li></ul>"),
            ("* a\n* b", "<ul><li>a</li><li>b</li></ul>"),
            ("• a\n• b", "<ul><li>a</li><li>b</li></ul>"),
            ("- *a*", "<ul><li><strong>a</strong></li></ul>"),
            ("1. a\n2. b", "<ol><li>a</li><li>b</li></ol>"),
            ("3. a\n4. b", "<ol start=\"3\"><li>a</li><li>b</li></ol>"),
            ("1. a\n1. b", "<ol><li>a</li></ol><ol><li>b</li></ol>"),
            (
                "intro\n- a\n- b\noutro",
                "intro<ul><li>a</li><li>b</li></ul>outro",
            ),
            ("a\n\n- x", "a<br><br><ul><li>x</li></ul>"),
            ("- a\n\nb", "<ul><li>a</li></ul><br>b"),
            (
                "- a\n\n> q",
                "<ul><li>a</li></ul><br><blockquote>q</blockquote>",
            ),
            ("-not a list", "-not a list"),
            ("1.5 apples", "1.5 apples"),
            ("01. no", "01. no"),
            ("12345678901. no", "12345678901. no"),
        ];
        for (input, expected) in cases {
            assert_eq!(&whatsapp_to_html(input), expected, "input: {input:?}");
        }
    }

    #[test]
    fn whatsapp_to_matrix_only_formats_when_needed() {
        assert_eq!(
            whatsapp_to_matrix("plain\ntext"),
            ("plain\ntext".to_owned(), None)
        );
        assert_eq!(whatsapp_to_matrix("2*3*4"), ("2*3*4".to_owned(), None));
        assert_eq!(
            whatsapp_to_matrix("*hi*"),
            ("*hi*".to_owned(), Some("<strong>hi</strong>".to_owned()))
        );
    }

    #[test]
    fn matrix_html_to_whatsapp_table() {
        let cases: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("<strong>bold</strong>", "*bold*"),
            ("<b>bold</b>", "*bold*"),
            ("<em>it</em> and <i>it</i>", "_it_ and _it_"),
            ("<del>a</del><s>b</s> <strike>c</strike>", "~a~~b~ ~c~"),
            ("<code>x_y</code>", "`x_y`"),
            ("<code>a`b</code>", "```a`b```"),
            ("<code><b>no</b> marks</code>", "`no marks`"),
            ("<strong><em>both</em></strong>", "*_both_*"),
            ("<b>a <b>nested</b> b</b>", "*a nested b*"),
            ("<b> spaced </b>word", "*spaced* word"),
            ("a<b> spaced </b>word", "a *spaced* word"),
            ("x<b> y</b>", "x *y*"),
            ("<b></b>empty", "empty"),
            ("<b> </b>x", "x"),
            ("a<b> </b>x", "a x"),
            ("<b>one<br>two</b>", "*one*\n*two*"),
            ("<pre><code>fn main() {\n    *x*\n}\n</code></pre>", "```fn main() {\n    *x*\n}```"),
            ("<pre><code class=\"language-rust\">let  x;</code></pre>", "```let  x;```"),
            ("<p>before</p><pre><code>x\n</code></pre><p>after</p>", "before\n\n```x```\n\nafter"),
            ("<blockquote>quoted</blockquote>", "> quoted"),
            ("<blockquote><p>a</p><p>b</p></blockquote>after", "> a\n> \n> b\nafter"),
            ("<blockquote>a<br>b</blockquote>", "> a\n> b"),
            ("<blockquote><blockquote>deep</blockquote></blockquote>", "> > deep"),
            ("<ul><li>a</li><li>b</li></ul>", "- a\n- b"),
            ("<ul>\n  <li>a</li>\n  <li>b</li>\n</ul>\n", "- a\n- b"),
            ("<ol><li>a</li><li>b</li></ol>", "1. a\n2. b"),
            ("<ol start=\"5\"><li>a</li><li>b</li></ol>", "5. a\n6. b"),
            ("<ol start=\"bogus\"><li>a</li></ol>", "1. a"),
            ("<ol><li>a</li><li value=\"7\">b</li><li>c</li></ol>", "1. a\n7. b\n8. c"),
            ("<ul><li>a<ul><li>b</li></ul></li><li>c</li></ul>", "- a\n  - b\n- c"),
            ("<ol><li><p>loose</p></li><li><p>list</p></li></ol>", "1. loose\n2. list"),
            ("intro<ul><li>x</li></ul>outro", "intro\n- x\noutro"),
            ("a<br>b", "a\nb"),
            ("a<br/><br/>b", "a\n\nb"),
            ("<p>one</p><p>two</p>", "one\n\ntwo"),
            ("<p>one</p>\n<p>two</p>\n", "one\n\ntwo"),
            ("<div>one</div><div>two</div>", "one\ntwo"),
            ("text<div>block</div>text", "text\nblock\ntext"),
            ("<h1>Title</h1><p>body</p>", "*Title*\n\nbody"),
            ("<h3>a <b>b</b></h3>", "*a b*"),
            ("<a href=\"https://example.com\">site</a>", "site (https://example.com)"),
            ("<a href=\"https://example.com\">https://example.com</a>", "https://example.com"),
            ("<a href=\"https://example.com/\">example.com</a>", "example.com"),
            ("<a href=\"mailto:a@b.c\">a@b.c</a>", "a@b.c"),
            ("<a href=\"https://example.com\"></a>", "https://example.com"),
            ("<a href=\"https://matrix.to/#/@alice:example.org\">Alice</a>: hi", "Alice: hi"),
            ("<a href=\"https://matrix.to/#/#room:example.org\">#room</a>", "#room (https://matrix.to/#/#room:example.org)"),
            ("<a href=\"javascript:alert(1)\">click</a>", "click"),
            ("<a>no href</a>", "no href"),
            ("<b><a href=\"https://x.org\">x</a></b>", "*x (https://x.org)*"),
            ("<img src=\"mxc://a/b\" alt=\":cat:\"> ok", ":cat: ok"),
            ("<img src=\"mxc://a/b\">ok", "ok"),
            ("<mx-reply><blockquote><a href=\"https://matrix.to/#/!r/$e\">In reply to</a> <a href=\"https://matrix.to/#/@b:c\">@b:c</a><br>original</blockquote></mx-reply>answer", "answer"),
            ("<span data-mx-spoiler=\"\">secret</span>", "secret"),
            ("<span data-mx-spoiler=\"reason\">secret</span>", "secret"),
            ("<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>", "a | b\n1 | 2"),
            ("<table>\n<thead><tr><th>a</th>\n<th>b</th></tr></thead>\n<tbody><tr><td>1</td><td>2</td></tr></tbody></table>", "a | b\n1 | 2"),
            ("<script>alert(1)</script>safe", "safe"),
            ("<style>p { color: red }</style>safe", "safe"),
            ("<font color=\"red\">red</font> <u>under</u> <sup>up</sup>", "red under up"),
            ("<unknown-tag>content</unknown-tag>", "content"),
            ("&lt;not a tag&gt; &amp; &quot;q&quot; &#x1F600; &eacute;", "<not a tag> & \"q\" 😀 é"),
            ("a&nbsp;&nbsp;b", "a  b"),
            ("  lots   of\n\t whitespace  ", "lots of whitespace"),
            ("a<hr>b", "a\n---\nb"),
            ("<b>unclosed <i>tags", "*unclosed _tags_*"),
            ("</p>stray end", "stray end"),
            ("<!-- comment -->visible", "visible"),
        ];
        for (html, expected) in cases {
            assert_eq!(
                matrix_to_whatsapp("fallback", Some(html), false),
                *expected,
                "html: {html:?}"
            );
        }
    }

    #[test]
    fn matrix_body_without_html() {
        let cases: &[(&str, bool, &str)] = &[
            ("plain *as is*", false, "plain *as is*"),
            ("> <@a:b.c> original\n> more\n\nanswer", true, "answer"),
            (
                "> <@a:b.c> original\n>\n> more\n\nanswer\n> kept",
                true,
                "answer\n> kept",
            ),
            (
                "> <@a:b.c> original\n\nanswer",
                false,
                "> <@a:b.c> original\n\nanswer",
            ),
            (
                "> quote without blank line\nanswer",
                true,
                "> quote without blank line\nanswer",
            ),
            ("> only a quote", true, "> only a quote"),
            ("not a reply", true, "not a reply"),
        ];
        for (body, is_reply, expected) in cases {
            assert_eq!(
                matrix_to_whatsapp(body, None, *is_reply),
                *expected,
                "body: {body:?}"
            );
        }
    }

    #[test]
    fn matrix_html_edge_cases() {
        // Empty or invisible HTML falls back to the body.
        assert_eq!(matrix_to_whatsapp("body", Some(""), false), "body");
        assert_eq!(matrix_to_whatsapp("body", Some("<img>"), false), "body");
        assert_eq!(
            matrix_to_whatsapp("> <@a:b> x\n\nbody", Some("  "), true),
            "body"
        );
        // The reply fallback in HTML goes regardless of `is_reply`.
        assert_eq!(
            matrix_to_whatsapp("x", Some("<mx-reply>old</mx-reply>new"), true),
            "new"
        );
        // Deep nesting: no stack overflow, text kept.
        let deep = format!("{}deep{}", "<b><i>".repeat(1200), "</i></b>".repeat(1200));
        assert_eq!(matrix_to_whatsapp("", Some(&deep), false), "*_deep_*");
        let divs = format!("{}x{}", "<div>".repeat(2000), "</div>".repeat(2000));
        assert_eq!(matrix_to_whatsapp("", Some(&divs), false), "x");
        // Past the tag budget: the body is used.
        let huge = "<br>".repeat(MAX_HTML_TAGS + 1);
        assert_eq!(matrix_to_whatsapp("body", Some(&huge), false), "body");
    }

    #[test]
    fn round_trips() {
        let cases = [
            "plain text",
            "*bold* _italic_ ~strike~ `code`",
            "*_both_* and _*both*_",
            "a *b* c\nnext line",
            "2*3*4 and snake_case_words",
            "> quoted *bold*\n> second\nafter",
            "- one\n- *two*\n- three",
            "1. one\n2. two\n3. three",
            "4. four\n5. five",
            "intro\n\n- a\n- b\n\noutro",
            "```\ncode *block*\n  indented\n```",
            "text\n```block```\nmore",
            "a  b   c",
            "  leading and trailing  ",
            "\n\nleading newlines",
            "> \n> x\n> ",
            "- \n- x",
            "1. a\n1. b",
            "see https://example.com/a_b_ ok",
            "<script>alert('x')</script> & more",
        ];
        for text in cases {
            let html = whatsapp_to_html(text);
            assert_eq!(
                matrix_to_whatsapp(text, Some(&html), false),
                text,
                "html: {html:?}"
            );
        }
    }

    fn html_ish() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("<b>".to_owned()),
            Just("</b>".to_owned()),
            Just("<i>".to_owned()),
            Just("</i>".to_owned()),
            Just("<p>".to_owned()),
            Just("</p>".to_owned()),
            Just("<br>".to_owned()),
            Just("<pre>".to_owned()),
            Just("</pre>".to_owned()),
            Just("<code>".to_owned()),
            Just("</code>".to_owned()),
            Just("<blockquote>".to_owned()),
            Just("</blockquote>".to_owned()),
            Just("<ul>".to_owned()),
            Just("<ol start=\"-3\">".to_owned()),
            Just("<li>".to_owned()),
            Just("</li>".to_owned()),
            Just("</ul>".to_owned()),
            Just("<a href=\"https://x.org\">".to_owned()),
            Just("</a>".to_owned()),
            Just("<mx-reply>".to_owned()),
            Just("<table><tr><td>".to_owned()),
            Just("<td>".to_owned()),
            Just("<script>".to_owned()),
            Just("<img alt=\"a\">".to_owned()),
            Just("&nbsp;".to_owned()),
            Just("&amp;".to_owned()),
            Just(" ".to_owned()),
            Just("\n".to_owned()),
            "[a-z*_~`> -]{0,6}",
            "\\PC{0,4}",
        ];
        prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
    }

    /// Text without markup characters, control characters, tabs or non-breaking spaces,
    /// and without trailing newlines (WhatsApp trims messages).
    fn markup_free_text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                4 => "[^*_~`>\\-•\\p{Cc}\u{a0}]{1,8}",
                1 => Just("\n".to_owned()),
                1 => Just(" ".to_owned()),
                1 => "[0-9]{1,2}\\. ",
            ],
            0..16,
        )
        .prop_map(|v| v.concat().trim_end_matches('\n').to_owned())
    }

    fn word() -> impl Strategy<Value = String> {
        let plain = "[a-zA-Z0-9éß]{1,8}";
        let marked = prop_oneof![
            3 => plain.prop_map(|w| w.to_owned()),
            1 => plain.prop_map(|w| format!("*{w}*")),
            1 => plain.prop_map(|w| format!("_{w}_")),
            1 => plain.prop_map(|w| format!("~{w}~")),
            1 => plain.prop_map(|w| format!("`{w}`")),
            1 => "[a-z]([a-z*_~ ]{0,4}[a-z])?".prop_map(|w| format!("`{w}`")),
            1 => plain.prop_map(|w| format!("*_{w}_*")),
            1 => plain.prop_map(|w| format!("~*_{w}_*~")),
            1 => (plain, plain).prop_map(|(a, b)| format!("_{a} {b}_")),
            1 => (plain, plain).prop_map(|(a, b)| format!("*{a} _{b}_*")),
            1 => "[a-z]{1,4}_[a-z]{1,4}_[a-z]{1,4}",
            1 => "[0-9]\\*[0-9]\\*[0-9]",
            1 => "https://[a-z]{1,5}\\.org/[a-z_*]{0,6}",
        ];
        let before = prop_oneof![4 => Just(""), 1 => Just("("), 1 => Just("\"")];
        let after = prop_oneof![4 => Just(""), 1 => Just(","), 1 => Just("."), 1 => Just(")!")];
        (before, marked, after).prop_map(|(b, w, a)| format!("{b}{w}{a}"))
    }

    /// Well-formed WhatsApp markup: lines of words, quotes and lists.
    fn whatsapp_markup() -> impl Strategy<Value = String> {
        let words = prop::collection::vec(word(), 1..6).prop_map(|w| w.join(" "));
        let line = (0..5u8, words);
        prop::collection::vec(line, 1..8).prop_map(|lines| {
            let mut number = 0;
            let mut out = Vec::new();
            for (kind, words) in lines {
                if kind != 4 {
                    number = 0;
                }
                out.push(match kind {
                    0 => words,
                    1 => format!("> {words}"),
                    2 => format!("- {words}"),
                    3 => format!("```\n{words}\n  *{words}*\n```"),
                    _ => {
                        number += 1;
                        format!("{number}. {words}")
                    }
                });
            }
            out.join("\n")
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn no_panic_on_any_string(s in "\\PC{0,200}", any in any::<String>()) {
            let _ = whatsapp_to_html(&s);
            let _ = whatsapp_to_html(&any);
            let _ = matrix_to_whatsapp(&s, Some(&s), true);
            let _ = matrix_to_whatsapp(&any, Some(&any), false);
            let _ = matrix_to_whatsapp(&any, None, true);
        }

        #[test]
        fn no_panic_on_html_ish(html in html_ish()) {
            let _ = matrix_to_whatsapp("body", Some(&html), true);
            let _ = whatsapp_to_html(&html);
        }

        #[test]
        fn markup_free_text_survives(text in markup_free_text()) {
            let html = whatsapp_to_html(&text);
            prop_assert_eq!(matrix_to_whatsapp(&text, Some(&html), false), text, "html: {}", html);
        }

        #[test]
        fn whatsapp_markup_round_trips(text in whatsapp_markup()) {
            let html = whatsapp_to_html(&text);
            prop_assert_eq!(matrix_to_whatsapp(&text, Some(&html), false), text, "html: {}", html);
        }
    }
}
