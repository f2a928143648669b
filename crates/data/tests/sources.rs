mod common;

use common::TempDir;
use qwen_data::{DataError, Document, FolderSource, JsonlSource, TextFileSource, TextMode};

fn texts(docs: impl Iterator<Item = qwen_data::Result<Document>>) -> Vec<String> {
    docs.map(|d| d.unwrap().text).collect()
}

#[test]
fn text_file_whole_and_blank_lines() {
    let dir = TempDir::new("src-text");
    let p = dir.write("a.txt", "first para\nline two\n\n\n  \nsecond para\n\nthird\n");
    assert_eq!(
        texts(TextFileSource::open(&p, TextMode::WholeFile).unwrap()),
        vec!["first para\nline two\n\n\n  \nsecond para\n\nthird\n"]
    );
    let docs: Vec<Document> =
        TextFileSource::open(&p, TextMode::BlankLines).unwrap().named("books").map(Result::unwrap).collect();
    assert_eq!(
        docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
        vec!["first para\nline two", "second para", "third"]
    );
    assert!(docs.iter().all(|d| &*d.source == "books"));
}

#[test]
fn missing_file_is_io_error_with_path() {
    let dir = TempDir::new("src-missing");
    let p = dir.join("nope.txt");
    match TextFileSource::open(&p, TextMode::WholeFile) {
        Err(DataError::Io { path, .. }) => assert_eq!(path, p),
        other => panic!("expected Io error, got {:?}", other.err()),
    }
}

#[test]
fn folder_is_walked_recursively_in_sorted_order() {
    let dir = TempDir::new("src-folder");
    dir.write("b.txt", "doc b");
    dir.write("a/z.txt", "doc a/z");
    dir.write("a/c/x.txt", "doc a/c/x");
    dir.write("c.jsonl", "{\"text\": \"json 1\"}\n\n{\"text\": \"json 2\", \"id\": 3}\n");
    dir.write("d.md", "doc d");
    let src = FolderSource::open(dir.path(), TextMode::WholeFile).unwrap().named("web");
    let docs: Vec<Document> = src.map(Result::unwrap).collect();
    assert_eq!(
        docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
        vec!["doc a/c/x", "doc a/z", "doc b", "json 1", "json 2", "doc d"]
    );
    assert!(docs.iter().all(|d| &*d.source == "web"));

    let only = FolderSource::open(dir.path(), TextMode::WholeFile).unwrap().with_extensions(["jsonl", "md"]);
    assert_eq!(texts(only), vec!["json 1", "json 2", "doc d"]);
}

#[test]
fn jsonl_reads_text_fields_in_order() {
    let dir = TempDir::new("src-jsonl");
    let p =
        dir.write("d.jsonl", "{\"text\": \"héllo\\nworld\", \"meta\": {\"lang\": \"fr\"}}\n{\"text\": \"second\"}\n");
    assert_eq!(texts(JsonlSource::open(&p).unwrap()), vec!["héllo\nworld", "second"]);
}

#[test]
fn malformed_jsonl_gives_typed_errors_with_line_numbers() {
    let dir = TempDir::new("src-bad-jsonl");
    let p = dir.write(
        "d.jsonl",
        "{\"text\": \"ok\"}\n{\"text\": broken\n\n{\"title\": \"no text\"}\n[1, 2]\n{\"text\": 5}\n{\"text\": \"last\"}\n",
    );
    let items: Vec<_> = JsonlSource::open(&p).unwrap().collect();
    assert_eq!(items.len(), 6);
    assert_eq!(items[0].as_ref().unwrap().text, "ok");
    match &items[1] {
        Err(DataError::MalformedJsonl { path, line, .. }) => {
            assert_eq!(*line, 2);
            assert_eq!(path, &p);
        }
        other => panic!("expected MalformedJsonl, got {other:?}"),
    }
    assert!(matches!(&items[2], Err(DataError::MissingText { line: 4, .. })), "{:?}", items[2]);
    assert!(matches!(&items[3], Err(DataError::MalformedJsonl { line: 5, .. })), "{:?}", items[3]);
    assert!(matches!(&items[4], Err(DataError::MissingText { line: 6, .. })), "{:?}", items[4]);
    assert_eq!(items[5].as_ref().unwrap().text, "last");
    let msg = items[1].as_ref().unwrap_err().to_string();
    assert!(msg.contains(":2:"), "{msg}");
}
