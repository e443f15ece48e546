//! The line a field path (`a.b[2].c`, as serde_path_to_error prints it) sits on in a YAML
//! text, read from saphyr-parser's event spans, so validation errors point at a line like
//! parse errors do. Only the config module calls it: YAML stays swappable in one place.

use saphyr_parser::{Event, Parser, Span};

/// One step of a field path: a mapping key or a sequence index.
#[derive(Debug, PartialEq)]
enum Step<'p> {
    Key(&'p str),
    Item(usize),
}

/// `rate_limits.policies[1].burst` → key, key, item 1, key. `None` for a malformed path.
fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut steps = Vec::new();
    for (n, part) in path.split('.').enumerate() {
        let (key, indexes) = match part.split_once('[') {
            Some((key, indexes)) => (key, Some(indexes)),
            None => (part, None),
        };
        match key {
            // Only a top-level sequence starts without a key: `[3].name`.
            "" if n > 0 || indexes.is_none() => return None,
            "" => {}
            key => steps.push(Step::Key(key)),
        }
        let Some(mut indexes) = indexes else { continue };
        loop {
            let (index, rest) = indexes.split_once(']')?;
            steps.push(Step::Item(index.parse().ok()?));
            match rest {
                "" => break,
                rest => indexes = rest.strip_prefix('[')?,
            }
        }
    }
    Some(steps)
}

/// 1-based line of the key (for a key step) or of the item (for an index step) that ends
/// `path` in the first document of `text`; `None` when the path is not in the text (a field
/// left to its default, a path through an alias) or the text is not YAML. Never panics.
pub fn locate_field(text: &str, path: &str) -> Option<usize> {
    let steps = steps(path)?;
    let mut parser = Parser::new_from_str(text);
    // A scan error before the path's end stops the walk (`map_while`); one after it is
    // found by reading on, so a text that breaks later gets no line from a half-read stream.
    let line = walk(steps, parser.by_ref().map_while(Result::ok))?;
    parser.all(|event| event.is_ok()).then_some(line)
}

/// Follows `steps` from the first document's root node; the line of the last step.
fn walk<'a>(steps: Vec<Step>, mut events: impl Events<'a>) -> Option<usize> {
    events.find(|(event, _)| matches!(event, Event::DocumentStart(_)))?;
    let (mut node, _) = events.next()?;
    let mut line = None;
    for step in steps {
        let (value, span) = match (step, node) {
            (Step::Key(key), Event::MappingStart(..)) => value_of(key, &mut events)?,
            (Step::Item(index), Event::SequenceStart(..)) => item(index, &mut events)?,
            _ => return None,
        };
        line = Some(span.start.line());
        node = value;
    }
    line
}

/// saphyr-parser's events with their spans, cut off at the first scan error.
trait Events<'a>: Iterator<Item = (Event<'a>, Span)> {}
impl<'a, I: Iterator<Item = (Event<'a>, Span)>> Events<'a> for I {}

/// Inside a mapping: finds `key`, returns the value's first event and the key's span.
fn value_of<'a>(key: &str, events: &mut impl Events<'a>) -> Option<(Event<'a>, Span)> {
    loop {
        let (k, span) = events.next()?;
        match k {
            Event::MappingEnd => return None,
            Event::Scalar(ref name, ..) if name == key => return Some((events.next()?.0, span)),
            other => {
                skip_rest_of(&other, events)?;
                let (value, _) = events.next()?;
                skip_rest_of(&value, events)?;
            }
        }
    }
}

/// Inside a sequence: returns the `index`-th item's first event and span.
fn item<'a>(index: usize, events: &mut impl Events<'a>) -> Option<(Event<'a>, Span)> {
    for _ in 0..index {
        let (skipped, _) = events.next()?;
        if matches!(skipped, Event::SequenceEnd) {
            return None;
        }
        skip_rest_of(&skipped, events)?;
    }
    let (first, span) = events.next()?;
    (!matches!(first, Event::SequenceEnd)).then_some((first, span))
}

/// Consumes the rest of the node `first` starts: a whole collection, however deep, without
/// recursion.
fn skip_rest_of<'a>(first: &Event, events: &mut impl Events<'a>) -> Option<()> {
    let opens = |e: &Event| matches!(e, Event::MappingStart(..) | Event::SequenceStart(..));
    let mut depth = usize::from(opens(first));
    while depth > 0 {
        match events.next()?.0 {
            ref e if opens(e) => depth += 1,
            Event::MappingEnd | Event::SequenceEnd => depth -= 1,
            _ => {}
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICIES: &str = "\
a: 1
rate_limits:
  policies:
    - name: x
      burst: 1
    - name: y  # the second
      burst: 0
";

    #[test]
    fn paths_are_found_on_their_lines() {
        // 200 levels: saphyr-parser refuses flow nesting past 255.
        let deep_value = format!("a: {}{}\nb: 1\n", "[".repeat(200), "]".repeat(200));
        #[rustfmt::skip]
        let cases: &[(&str, &str, Option<usize>)] = &[
            (POLICIES, "a", Some(1)),
            (POLICIES, "rate_limits.policies", Some(3)),
            (POLICIES, "rate_limits.policies[1]", Some(6)),
            (POLICIES, "rate_limits.policies[1].burst", Some(7)),
            // flow style: the scanner could not see these
            ("p:\n  - {name: a, burst: 1}\n  - {name: b,\n     burst: 0}\n", "p[1].burst", Some(4)),
            ("p: [1, 2,\n  3]\n", "p[2]", Some(2)),
            ("{a: 1,\n b: {c: 2}}\n", "b.c", Some(2)),
            // quoted keys, comments, a key that prefixes another, explicit document start
            ("'a': 1\n\"b\": 2\n", "b", Some(2)),
            ("# a: 1\nab: 1\na: 2\n", "a", Some(3)),
            ("x:\n  ab: 1\n  a:\n    c: 2\n", "x.a.c", Some(4)),
            ("---\na: 1\n", "a", Some(2)),
            // a nested value skipped on the way
            ("x:\n  y: [[1, {z: 2}], 3]\n  w: 4\n", "x.w", Some(3)),
            // a key that looks like a path step in a string value
            ("x: 'a: 1'\na: 2\n", "a", Some(2)),
            // only the first document counts
            ("a: 1\n---\nb: 2\n", "b", None),
            // a deep value skipped without recursion
            (&deep_value, "b", Some(2)),
        ];
        for (text, path, want) in cases {
            let shown = &text[..text.len().min(60)];
            assert_eq!(locate_field(text, path), *want, "{path} in {shown:?}");
        }
    }

    #[test]
    fn missing_or_hostile_paths_and_texts_give_none() {
        let deep = "[".repeat(10_000);
        let deep_map = "a: ".repeat(5_000);
        #[rustfmt::skip]
        let cases: &[(&str, &str)] = &[
            (POLICIES, "nope"),
            (POLICIES, "rate_limits.policies[2]"),
            (POLICIES, "rate_limits.policies[0].rate"),
            (POLICIES, "a.b"),                      // a scalar has no keys
            (POLICIES, "a[0]"),                     // nor items
            (POLICIES, "rate_limits[0]"),           // a mapping has no items
            (POLICIES, "rate_limits.policies.name"), // a sequence has no keys
            (POLICIES, ""),
            (POLICIES, "rate_limits.policies[x]"),
            (POLICIES, "rate_limits.policies[1"),
            (POLICIES, "rate_limits.policies[1]x"),
            (POLICIES, "rate_limits.policies[99999999999999999999999]"),
            ("base: &b {c: 1}\nd: *b\n", "d.c"),   // through an alias
            ("", "a"),
            ("a: [1, 2\n", "a[1]"),                 // unterminated flow sequence
            ("a: 1\n\tb: 2\n", "b"),                // a tab where indentation goes
            ("a: 'open\n", "a.b"),
            (&deep, "a"),
            (&deep, "[0][0][0]"),
            (&deep_map, "a.a.a"),
        ];
        for (text, path) in cases {
            let shown = &text[..text.len().min(40)];
            assert_eq!(locate_field(text, path), None, "{path} in {shown:?}");
        }
    }

    #[test]
    fn paths_split_into_steps() {
        use Step::{Item, Key};
        let cases: &[(&str, Vec<Step>)] = &[
            ("a", vec![Key("a")]),
            ("a.b[2].c", vec![Key("a"), Key("b"), Item(2), Key("c")]),
            ("a[0][1]", vec![Key("a"), Item(0), Item(1)]),
            ("[3]", vec![Item(3)]),
        ];
        for (path, want) in cases {
            assert_eq!(steps(path).as_ref(), Some(want), "{path}");
        }
        for malformed in ["a[", "a[]", "a..b", "", ".a", "a[-1]", "a[1]b", "a[1]]"] {
            assert_eq!(steps(malformed), None, "{malformed}");
        }
    }
}
