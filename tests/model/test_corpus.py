import zlib

import pytest

from model.corpus import clean_osis, parse_imp, read_moses, read_tsv, split_of


def test_split_follows_crc32_of_the_reference():
    for ref in ("Genesis 1:1", "John 3:16", "Revelation 22:21", "Psalms 23:1"):
        bucket = zlib.crc32(ref.encode()) % 100
        expected = "test" if bucket in (0, 1) else "dev" if bucket == 2 else "train"
        assert split_of(ref) == expected


def test_notes_and_titles_go_with_their_contents_and_words_are_not_glued():
    osis = (
        '<w lemma="a">In</w> <w>the</w> <w>beginning</w>, <w>God</w><note placement="foot">'
        "<reference>1:1 </reference>The Hebrew word</note><w>created</w> <title>Heading</title>"
        "the heavens &amp; the earth.<div eID='x'/>"
    )
    assert clean_osis(osis) == "In the beginning, God created the heavens & the earth."


def test_imp_parser_skips_headings_and_keeps_verses_by_reference():
    imp = "$$$Genesis 0:0\n<title>Genesis</title>\n$$$Genesis 1:0\n<chapter/>\n$$$Genesis 1:1\n<w>In</w> the\n"
    assert parse_imp(imp) == {"Genesis 1:1": "In the"}


def test_tsv_reader_names_bad_lines(tmp_path):
    good = tmp_path / "good.tsv"
    good.write_text("hello\thola\nbye\tadiós\tref-2\n", encoding="utf-8")
    pairs = read_tsv(good)
    assert [(p.src, p.tgt) for p in pairs] == [("hello", "hola"), ("bye", "adiós")]
    assert pairs[1].ref == "ref-2"
    bad = tmp_path / "bad.tsv"
    bad.write_text("only one column\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.tsv:1: expected source<TAB>target"):
        read_tsv(bad)


def test_moses_reader_pairs_lines_and_rejects_unequal_files(tmp_path):
    (tmp_path / "c.en").write_text("a\nb\n")
    (tmp_path / "c.es").write_text("x\ny\n")
    assert [(p.src, p.tgt) for p in read_moses(tmp_path / "c.en", tmp_path / "c.es")] == [("a", "x"), ("b", "y")]
    (tmp_path / "d.es").write_text("x\n")
    with pytest.raises(ValueError, match="has 2 lines but"):
        read_moses(tmp_path / "c.en", tmp_path / "d.es")


def test_bible_builder_pairs_about_31000_verses_from_the_sword_modules():
    from model.corpus import build_bible

    pairs = build_bible()
    assert 30000 <= len(pairs) <= 32000
    first = next(p for p in pairs if p.ref == "Genesis 1:1")
    assert first.src == "In the beginning, God created the heavens and the earth."
    assert first.tgt == "EN el principio crió Dios los cielos y la tierra."
    splits = [split_of(p.ref) for p in pairs]
    assert 550 <= splits.count("test") <= 660 and 250 <= splits.count("dev") <= 330
    assert not any("<" in p.src or "<" in p.tgt for p in pairs)
