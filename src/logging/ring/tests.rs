use super::*;

fn line(level: LogLevel, msg: &str) -> LogLine {
    LogLine::new(1, level, "test", None, None, msg.to_string())
}

fn seqs(read: &Read) -> Vec<u64> {
    read.lines.iter().map(|l| l.seq).collect()
}

#[test]
fn lines_are_numbered_from_one_and_read_after_a_number() {
    let ring = LogRing::new(100, 1 << 20);
    for i in 0..5 {
        assert_eq!(ring.push(line(LogLevel::Info, &format!("m{i}"))), i + 1);
    }
    let all = ring.read(Start::After(0), LogLevel::Trace, 100, 1 << 20);
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5]);
    assert_eq!((all.next, all.more, all.dropped), (5, false, 0));
    assert_eq!(all.lines[2].msg, "m2");
    let after = ring.read(Start::After(3), LogLevel::Trace, 100, 1 << 20);
    assert_eq!(seqs(&after), [4, 5]);
    let none = ring.read(Start::After(5), LogLevel::Trace, 100, 1 << 20);
    assert!(none.lines.is_empty());
    assert_eq!((none.next, none.more), (5, false));
}

#[test]
fn the_ring_keeps_at_most_keep_lines() {
    let ring = LogRing::new(10, 1 << 20);
    for i in 0..25 {
        ring.push(line(LogLevel::Info, &format!("m{i}")));
    }
    assert_eq!(ring.len(), 10);
    let all = ring.read(Start::After(0), LogLevel::Trace, 100, 1 << 20);
    assert_eq!(seqs(&all), (16..=25).collect::<Vec<_>>());
    // Lines 1 to 15 left before the reader came back for them.
    assert_eq!(all.dropped, 15);
    // Shrinking the bound drops the oldest at once.
    ring.set_bounds(3, 1 << 20);
    assert_eq!(
        seqs(&ring.read(Start::After(0), LogLevel::Trace, 100, 1 << 20)),
        [23, 24, 25]
    );
}

#[test]
fn the_ring_keeps_at_most_its_bytes() {
    let max_bytes = 20_000;
    let ring = LogRing::new(1_000_000, max_bytes);
    let msg = "x".repeat(1000);
    for _ in 0..1000 {
        ring.push(line(LogLevel::Info, &msg));
        assert!(ring.bytes() <= max_bytes, "{} bytes", ring.bytes());
    }
    let kept = ring.len();
    assert!(
        (10..20).contains(&kept),
        "{kept} lines of about 1.2 KB in 20 KB"
    );
    assert_eq!(
        ring.read(Start::Tail, LogLevel::Trace, 1_000_000, usize::MAX)
            .lines
            .len(),
        kept
    );
}

#[test]
fn keep_zero_keeps_nothing_but_counts() {
    let ring = LogRing::new(0, 1 << 20);
    ring.push(line(LogLevel::Error, "gone"));
    ring.push(line(LogLevel::Error, "gone"));
    assert!(ring.is_empty());
    let read = ring.read(Start::After(0), LogLevel::Trace, 10, 1 << 20);
    assert!(read.lines.is_empty());
    assert_eq!((read.next, read.dropped), (2, 2));
}

#[test]
fn long_messages_and_targets_are_cut_on_a_character_boundary() {
    let long = LogLine::new(
        1,
        LogLevel::Info,
        &"t".repeat(1000),
        None,
        None,
        "é".repeat(10_000),
    );
    assert!(long.msg.len() <= MAX_MSG, "{}", long.msg.len());
    assert!(long.msg.ends_with('…'));
    assert!(long.target.len() <= MAX_TARGET);
    let short = LogLine::new(1, LogLevel::Info, "t", None, None, "short".into());
    assert_eq!(short.msg, "short");
    let mut text = "ab".to_string();
    cut(&mut text, 1);
    assert_eq!(text, "");
}

#[test]
fn a_level_is_a_minimum() {
    let ring = LogRing::new(100, 1 << 20);
    for level in [
        LogLevel::Trace,
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Warn,
        LogLevel::Error,
    ] {
        ring.push(line(level, level.as_str()));
    }
    let warn = ring.read(Start::After(0), LogLevel::Warn, 100, 1 << 20);
    let levels: Vec<_> = warn.lines.iter().map(|l| l.level).collect();
    assert_eq!(levels, [LogLevel::Warn, LogLevel::Error]);
    // The lines left out are not read again.
    assert_eq!(warn.next, 5);
    assert_eq!("WARN".parse::<LogLevel>(), Ok(LogLevel::Warn));
    assert_eq!("loud".parse::<LogLevel>(), Err(()));
}

#[test]
fn a_read_stops_at_its_lines_and_bytes_and_says_there_is_more() {
    let ring = LogRing::new(100, 1 << 20);
    for i in 0..10 {
        ring.push(line(LogLevel::Info, &format!("{i:0>500}")));
    }
    let first = ring.read(Start::After(0), LogLevel::Trace, 4, 1 << 20);
    assert_eq!(seqs(&first), [1, 2, 3, 4]);
    assert_eq!((first.next, first.more), (4, true));
    let rest = ring.read(Start::After(first.next), LogLevel::Trace, 100, 1 << 20);
    assert_eq!(seqs(&rest), [5, 6, 7, 8, 9, 10]);
    assert!(!rest.more);

    // About 700 bytes a line.
    let by_bytes = ring.read(Start::After(0), LogLevel::Trace, 100, 2500);
    assert_eq!(seqs(&by_bytes), [1, 2, 3]);
    assert!(by_bytes.more);
    // A budget smaller than one line gets that line, cut to fit.
    let tiny = ring.read(Start::After(0), LogLevel::Trace, 100, 300);
    assert_eq!(seqs(&tiny), [1]);
    assert!(tiny.lines[0].msg.len() < 100, "{}", tiny.lines[0].msg);
    assert!(tiny.more);
}

#[test]
fn a_tail_is_the_newest_lines_oldest_first() {
    let ring = LogRing::new(100, 1 << 20);
    for i in 0..10 {
        let level = if i % 2 == 0 {
            LogLevel::Info
        } else {
            LogLevel::Warn
        };
        ring.push(line(level, &format!("m{i}")));
    }
    let tail = ring.read(Start::Tail, LogLevel::Trace, 3, 1 << 20);
    assert_eq!(seqs(&tail), [8, 9, 10]);
    assert_eq!((tail.next, tail.more), (10, true));
    let all = ring.read(Start::Tail, LogLevel::Trace, 100, 1 << 20);
    assert_eq!((all.lines.len(), all.more), (10, false));
    let warn = ring.read(Start::Tail, LogLevel::Warn, 3, 1 << 20);
    assert_eq!(seqs(&warn), [6, 8, 10]);
    let none = ring.read(Start::Tail, LogLevel::Trace, 0, 1 << 20);
    assert!(none.lines.is_empty());
    assert_eq!(none.next, 10);
}

#[test]
fn rings_have_their_own_epochs_and_timestamps_read_as_rfc3339() {
    assert_ne!(LogRing::new(1, 1).epoch(), LogRing::new(1, 1).epoch());
    assert_eq!(
        rfc3339(1_500_000_000_123_456),
        "2017-07-14T02:40:00.123456Z"
    );
}
