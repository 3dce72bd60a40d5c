//! Mails and mboxes: splitting an mbox into messages, reading a mail's
//! headers (subject, author, date, Message-ID, with RFC 2047 words decoded),
//! its `[PATCH vN n/m]` tag, its trailers and its body, decoding
//! quoted-printable.

use super::{Line, MailInfo, ParseError, SubjectTag, Trailer};

/// Lines without their `\n`; a final line without newline is kept.
pub(super) fn split_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let trimmed = data.strip_suffix(b"\n").unwrap_or(data);
    let empty = data.is_empty();
    trimmed.split(|&b| b == b'\n').filter(move |_| !empty)
}

/// Splits an mbox into messages at `From ` separator lines that are
/// followed by a mail header; anything else is one message.
pub(super) fn split_mbox<'a>(lines: &'a [Line<'a>]) -> Vec<&'a [Line<'a>]> {
    let is_separator = |i: usize| {
        lines[i].text.starts_with(b"From ")
            && lines
                .get(i + 1)
                .is_some_and(|next| is_header_line(&next.text))
    };
    let starts: Vec<usize> = (0..lines.len()).filter(|&i| is_separator(i)).collect();
    if starts.is_empty() {
        return vec![lines];
    }
    let mut out = Vec::new();
    // Text before the first separator (rare) is kept as its own message so a
    // diff there is not lost.
    if starts[0] > 0 {
        out.push(&lines[..starts[0]]);
    }
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(lines.len());
        out.push(&lines[s..end]);
    }
    out
}

pub(super) fn is_header_line(text: &[u8]) -> bool {
    let Some(colon) = text.iter().position(|&b| b == b':') else {
        return false;
    };
    colon > 0
        && text[..colon]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
        && text[0].is_ascii_alphabetic()
}

/// A mail split into what the series needs from its headers and its
/// decoded body.
pub(super) struct Mail<'a> {
    /// The subject, RFC 2047 words decoded, folded lines joined.
    pub(super) subject: Option<String>,
    pub(super) info: MailInfo,
    pub(super) body: Vec<Line<'a>>,
}

/// Separates a mail's headers from its body and decodes the body; text that
/// is not a mail is returned as is.
pub(super) fn read_mail<'a>(name: &str, msg: &'a [Line<'a>]) -> Result<Mail<'a>, ParseError> {
    let mut i = 0;
    if msg.first().is_some_and(|l| l.text.starts_with(b"From ")) {
        i = 1;
    }
    if !msg.get(i).is_some_and(|l| is_header_line(&l.text)) {
        return Ok(Mail {
            subject: None,
            info: MailInfo::default(),
            body: msg.to_vec(),
        });
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    while let Some(line) = msg.get(i) {
        i += 1;
        if line.text.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(&line.text).into_owned();
        if text.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(text.trim());
            }
        } else if let Some((k, v)) = text.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |k: &str| {
        headers
            .iter()
            .find(|(hk, _)| hk == k)
            .map(|(_, v)| v.clone())
    };
    let subject = header("subject").map(|s| decode_words(&s));
    let raw_body = &msg[i.min(msg.len())..];
    let body = match header("content-transfer-encoding").map(|v| v.to_ascii_lowercase()) {
        Some(enc) if enc == "quoted-printable" => decode_quoted_printable(raw_body),
        Some(enc) if enc == "base64" => {
            return Err(ParseError::Malformed {
                file: name.to_string(),
                line: msg.first().map(|l| l.no).unwrap_or(1),
                message: "the mail body is base64-encoded; save it decoded (e.g. with `b4 am`)"
                    .to_string(),
            })
        }
        _ => raw_body.to_vec(),
    };
    let message = commit_message(&body);
    // `git send-email` puts the author in the body when someone else sends
    // the patch; `git am` takes that one, and so do we.
    let in_body_from = message
        .iter()
        .find(|l| !l.is_empty())
        .and_then(|l| l.strip_prefix("From:"))
        .map(|v| decode_words(v.trim()));
    let info = MailInfo {
        author: in_body_from.or_else(|| header("from").map(|f| decode_words(&f))),
        date: header("date"),
        message_id: header("message-id").map(|m| {
            m.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        }),
        tag: subject.as_deref().and_then(SubjectTag::parse),
        trailers: trailers(&message),
    };
    Ok(Mail {
        subject,
        info,
        body,
    })
}

/// The commit message: the body up to the `---` line of `git format-patch`
/// or the first diff, as text.
fn commit_message(body: &[Line]) -> Vec<String> {
    let mut out = Vec::new();
    for (k, l) in body.iter().enumerate() {
        let t: &[u8] = &l.text;
        let plain_diff =
            t.starts_with(b"--- ") && body.get(k + 1).is_some_and(|n| n.text.starts_with(b"+++ "));
        if t == b"---" || t.starts_with(b"diff --git ") || t.starts_with(b"Index: ") || plain_diff {
            break;
        }
        out.push(String::from_utf8_lossy(t).trim_end().to_string());
    }
    out
}

/// The trailers of a commit message: its last paragraph, when it holds at
/// least one well-known trailer (`Signed-off-by:`, `Link:`, ...). Lines in
/// that paragraph that are no trailer (a maintainer's `[note]`) are left
/// out; an indented line continues the trailer above it, as in git.
fn trailers(message: &[String]) -> Vec<Trailer> {
    let end = message
        .iter()
        .rposition(|l| !l.trim().is_empty())
        .map_or(0, |e| e + 1);
    let start = message[..end]
        .iter()
        .rposition(|l| l.trim().is_empty())
        .map_or(0, |s| s + 1);
    let mut out: Vec<Trailer> = Vec::new();
    for line in &message[start..end] {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.value.push(' ');
                last.value.push_str(line.trim());
            }
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let is_token = !key.is_empty()
            && key.starts_with(|c: char| c.is_ascii_alphanumeric())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if is_token && !value.trim().is_empty() {
            out.push(Trailer {
                key: key.to_string(),
                value: value.trim().to_string(),
            });
        }
    }
    let known = |t: &Trailer| {
        let k = t.key.to_ascii_lowercase();
        k.ends_with("-by")
            || ["link", "cc", "fixes", "closes", "change-id", "message-id"].contains(&k.as_str())
    };
    if out.iter().any(known) {
        out
    } else {
        Vec::new()
    }
}

impl SubjectTag {
    /// Reads the bracketed prefix of a subject: `[PATCH v2 3/7]`, `[PATCH
    /// RFCv2 09/13]`, `[RFC PATCH v2 3/7]`, `[PATCHv3 net-next 1/2]`,
    /// `[RFC][PATCH 1/2]`, `[PATCH]`. `None` when no leading bracket says
    /// PATCH or RFC.
    pub fn parse(subject: &str) -> Option<SubjectTag> {
        let mut rest = subject.trim_start();
        let mut tokens: Vec<&str> = Vec::new();
        let mut groups: Vec<&str> = Vec::new();
        while let Some(inner) = rest.strip_prefix('[') {
            let close = inner.find(']')?;
            groups.push(&inner[..close]);
            tokens.extend(inner[..close].split_whitespace());
            rest = inner[close + 1..].trim_start();
        }
        let mut tag = SubjectTag {
            prefix: groups.join("]["),
            version: 1,
            rfc: false,
            number: None,
            total: None,
        };
        let mut is_patch = false;
        let version_of = |t: &str| -> Option<u32> {
            let t = t.strip_prefix('-').unwrap_or(t);
            t.strip_prefix(['v', 'V'])?.parse().ok()
        };
        for token in tokens {
            let upper = token.to_ascii_uppercase();
            if let Some(v) = upper.strip_prefix("PATCH") {
                is_patch = true;
                if let Some(n) = version_of(v) {
                    tag.version = n;
                }
            } else if let Some(v) = upper.strip_prefix("RFC") {
                is_patch = true;
                tag.rfc = true;
                if let Some(n) = version_of(v) {
                    tag.version = n;
                }
            } else if let Some(n) = version_of(token) {
                tag.version = n;
            } else if let Some((n, m)) = token.split_once('/') {
                if let (Ok(n), Ok(m)) = (n.parse(), m.parse()) {
                    tag.number = Some(n);
                    tag.total = Some(m);
                }
            }
        }
        is_patch.then_some(tag)
    }
}

/// Whether a subject is a reply (`Re: [PATCH ...]`): a review, not a patch.
pub(super) fn is_reply(subject: &str) -> bool {
    subject
        .trim_start()
        .get(..3)
        .is_some_and(|p| p.eq_ignore_ascii_case("re:"))
}

/// Decodes RFC 2047 encoded words (`=?utf-8?q?Andr=C3=A9?=`, `=?UTF-8?B?...?=`)
/// in a header value; whitespace between two encoded words is dropped, as
/// the RFC says. Words that do not decode are kept as written.
pub fn decode_words(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    let mut pending_space = String::new();
    let mut last_was_word = false;
    while !rest.is_empty() {
        if let Some(start) = rest.find("=?") {
            let (before, from) = rest.split_at(start);
            if let Some((decoded, len)) = decode_word(from) {
                let between_words = last_was_word && before.trim().is_empty();
                if !between_words {
                    out.push_str(&pending_space);
                    out.push_str(before);
                }
                pending_space.clear();
                out.push_str(&decoded);
                rest = &from[len..];
                last_was_word = true;
                // Whitespace after a word is held back until we know whether
                // another word follows.
                let ws = rest.len() - rest.trim_start().len();
                pending_space.push_str(&rest[..ws]);
                rest = &rest[ws..];
                continue;
            }
            out.push_str(&pending_space);
            pending_space.clear();
            out.push_str(&rest[..start + 2]);
            rest = &rest[start + 2..];
            last_was_word = false;
        } else {
            out.push_str(&pending_space);
            pending_space.clear();
            out.push_str(rest);
            break;
        }
    }
    out.push_str(&pending_space);
    out
}

/// One encoded word at the start of `text`: its text and its length.
fn decode_word(text: &str) -> Option<(String, usize)> {
    let inner = text.strip_prefix("=?")?;
    let (charset, inner) = inner.split_once('?')?;
    let (encoding, inner) = inner.split_once('?')?;
    let end = inner.find("?=")?;
    let payload = &inner[..end];
    if payload.contains(char::is_whitespace) {
        return None;
    }
    let bytes = match encoding {
        "q" | "Q" => {
            let mut out = Vec::new();
            let b = payload.as_bytes();
            let mut k = 0;
            while k < b.len() {
                match b[k] {
                    b'_' => out.push(b' '),
                    b'=' => {
                        let hex = std::str::from_utf8(b.get(k + 1..k + 3)?).ok()?;
                        out.push(u8::from_str_radix(hex, 16).ok()?);
                        k += 2;
                    }
                    c => out.push(c),
                }
                k += 1;
            }
            out
        }
        "b" | "B" => decode_base64(payload)?,
        _ => return None,
    };
    let len = 2 + charset.len() + 1 + encoding.len() + 1 + end + 2;
    // RFC 2231 allows a language after the charset: `utf-8*en`.
    let charset = charset.split('*').next().unwrap_or("").to_ascii_lowercase();
    let decoded = match charset.as_str() {
        "iso-8859-1" | "latin1" | "iso8859-1" => bytes.iter().map(|&b| b as char).collect(),
        _ => String::from_utf8_lossy(&bytes).into_owned(),
    };
    Some((decoded, len))
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let data = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::new();
    for chunk in data.chunks(4) {
        let mut acc = 0u32;
        for (k, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * k);
        }
        let bytes = acc.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

/// Decodes quoted-printable lines; a decoded line keeps the number of the
/// raw line it started on.
pub(super) fn decode_quoted_printable<'a>(body: &[Line<'a>]) -> Vec<Line<'a>> {
    let mut out = Vec::new();
    let mut current: Option<(usize, Vec<u8>)> = None;
    for line in body {
        let (_, buf) = current.get_or_insert_with(|| (line.no, Vec::new()));
        let text: &[u8] = &line.text;
        let (text, soft) = match text.strip_suffix(b"=") {
            Some(t) => (t, true),
            None => (text, false),
        };
        let mut k = 0;
        while k < text.len() {
            if text[k] == b'=' {
                let hex = text
                    .get(k + 1..k + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    buf.push(v);
                    k += 3;
                    continue;
                }
            }
            buf.push(text[k]);
            k += 1;
        }
        if !soft {
            if let Some((no, buf)) = current.take() {
                out.push(Line {
                    no,
                    text: std::borrow::Cow::Owned(buf),
                });
            }
        }
    }
    if let Some((no, buf)) = current.take() {
        out.push(Line {
            no,
            text: std::borrow::Cow::Owned(buf),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{parse, parse_file, SkipReason};
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/kernel/series")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn encoded_words_are_decoded() {
        assert_eq!(
            decode_words("=?utf-8?q?Andr=C3=A9_D=C3=A9v?= <andre@example.invalid>"),
            "André Dév <andre@example.invalid>"
        );
        assert_eq!(decode_words("=?UTF-8?B?w6k=?= x"), "é x");
        // Whitespace between two encoded words goes, other whitespace stays.
        assert_eq!(decode_words("=?utf-8?q?a?= =?utf-8?q?b?= c"), "ab c");
        assert_eq!(decode_words("x =?iso-8859-1?q?=E9?="), "x é");
        // Not an encoded word: kept as written.
        assert_eq!(decode_words("a =?broken b"), "a =?broken b");
        assert_eq!(decode_words("=?utf-8?x?abc?="), "=?utf-8?x?abc?=");
    }

    #[test]
    fn subject_tags_in_the_forms_lists_use() {
        let tag = |s: &str| SubjectTag::parse(s).map(|t| (t.version, t.rfc, t.number, t.total));
        assert_eq!(
            tag("[PATCH RFCv2 09/13] iommufd: x"),
            Some((2, true, Some(9), Some(13)))
        );
        assert_eq!(
            tag("[RFC PATCH v2 3/7] x"),
            Some((2, true, Some(3), Some(7)))
        );
        assert_eq!(tag("[PATCH 1/2] x"), Some((1, false, Some(1), Some(2))));
        assert_eq!(tag("[PATCH] x"), Some((1, false, None, None)));
        assert_eq!(
            tag("[PATCHv3 net-next 2/5] x"),
            Some((3, false, Some(2), Some(5)))
        );
        assert_eq!(
            tag("[RFC][PATCH v4 0/3] x"),
            Some((4, true, Some(0), Some(3)))
        );
        assert_eq!(
            tag("[PATCH v2 RESEND 1/3] x"),
            Some((2, false, Some(1), Some(3)))
        );
        assert_eq!(tag("[GIT PULL] iommu fixes"), None);
        assert_eq!(tag("iommu: no tag"), None);
        assert_eq!(
            SubjectTag::parse("[PATCH RFCv2 09/13] x").unwrap().prefix,
            "PATCH RFCv2 09/13"
        );
        assert!(is_reply("Re: [PATCH v2 3/7] x"));
        assert!(is_reply("RE: [PATCH v2 3/7] x"));
        assert!(!is_reply("[PATCH v2 3/7] Re-add a lock"));
    }

    #[test]
    fn author_date_message_id_and_trailers_are_kept() {
        let patches = parse("f.eml", &fixture("demo-v2/f.eml")).unwrap();
        let p = &patches[0];
        assert_eq!(
            p.subject.as_deref(),
            Some("[PATCH v2 1/3] demo: a comment instead of a blank line")
        );
        let m = &p.mail;
        assert_eq!(
            m.author.as_deref(),
            Some("André Dév <andre@example.invalid>")
        );
        assert_eq!(m.author_name().as_deref(), Some("André Dév"));
        assert_eq!(m.date.as_deref(), Some("Mon, 13 Jan 2025 10:00:01 +0000"));
        assert_eq!(m.message_id.as_deref(), Some("v2-1.demo@example.invalid"));
        let trailers: Vec<(&str, &str)> = m
            .trailers
            .iter()
            .map(|t| (t.key.as_str(), t.value.as_str()))
            .collect();
        assert_eq!(
            trailers,
            [
                ("Suggested-by", "Someone Else <else@example.invalid>"),
                ("Signed-off-by", "André Dév <andre@example.invalid>"),
                ("Reviewed-by", "Reviewer <rev@example.invalid>"),
                ("Acked-by", "Maintainer <maint@example.invalid>"),
                ("Tested-by", "Tester <test@example.invalid>"),
                (
                    "Link",
                    "https://lore.kernel.org/r/v1-1.demo@example.invalid"
                ),
                ("Cc", "list@example.invalid"),
            ]
        );
    }

    #[test]
    fn a_real_mail_keeps_its_headers_and_the_in_body_author_wins() {
        let patches = parse("0009.eml", &fixture("sw-msi-rfcv2-0009.eml")).unwrap();
        let m = &patches[0].mail;
        assert_eq!(
            m.author.as_deref(),
            Some("Nicolin Chen <nicolinc@nvidia.com>")
        );
        assert_eq!(m.date.as_deref(), Some("Fri, 10 Jan 2025 19:32:25 -0800"));
        assert_eq!(
            m.message_id.as_deref(),
            Some("d3cb1694e07be0e214dc44dcb2cb74f014606560.1736550979.git.nicolinc@nvidia.com")
        );
        let tag = m.tag.as_ref().unwrap();
        assert_eq!(
            (tag.version, tag.rfc, tag.number, tag.total),
            (2, true, Some(9), Some(13))
        );
        let keys: Vec<&str> = m.trailers.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys, ["Suggested-by", "Signed-off-by"]);
        // `git send-email` of someone else's patch: the body's From: is the author.
        let text = "From: Sender <s@example.invalid>\nSubject: [PATCH 1/1] x\n\n\
                    From: Jason Gunthorpe <jgg@nvidia.com>\n\nBody.\n\n\
                    Signed-off-by: Jason Gunthorpe <jgg@nvidia.com>\n---\n\
                    --- a/f.c\n+++ b/f.c\n@@ -1 +1 @@\n-a\n+b\n";
        let p = &parse("m.eml", text.as_bytes()).unwrap()[0];
        assert_eq!(
            p.mail.author.as_deref(),
            Some("Jason Gunthorpe <jgg@nvidia.com>")
        );
        assert_eq!(p.mail.trailers.len(), 1);
    }

    #[test]
    fn a_real_cover_letter_and_a_reply_are_skipped() {
        let parsed = parse_file("0000.eml", &fixture("sw-msi-v2-0000.eml")).unwrap();
        assert!(parsed.patches.is_empty());
        assert_eq!(parsed.skipped[0].why, SkipReason::CoverLetter);
        assert_eq!(
            parsed.skipped[0].subject.as_deref(),
            Some("[PATCH v2 0/7] iommufd: Add MSI mapping support with nested SMMU (Part-2 RMR)")
        );
        // The reply carries a diff; it is still no patch.
        let parsed = parse_file("d.eml", &fixture("demo-v2/d.eml")).unwrap();
        assert!(parsed.patches.is_empty());
        assert_eq!(parsed.skipped[0].why, SkipReason::Reply);
        // A cover letter with an interdiff.
        let parsed = parse_file("b.eml", &fixture("demo-v2/b.eml")).unwrap();
        assert!(parsed.patches.is_empty());
        assert_eq!(parsed.skipped[0].why, SkipReason::CoverLetter);
    }

    #[test]
    fn trailers_need_a_known_one_in_the_last_paragraph() {
        let lines = |t: &str| t.lines().map(String::from).collect::<Vec<_>>();
        assert!(trailers(&lines("Subject line\n\nNote: this is prose.\n")).is_empty());
        let t = trailers(&lines(
            "x\n\nFixes: 1234 (\"y\")\n[jgg: reworded]\nSigned-off-by: A <a@b>\n  continued\n",
        ));
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].value, "A <a@b> continued");
    }
}
