"""The bundled unseen corpus slice (``britannica``): prose that shares no document with the default corpus."""

from __future__ import annotations

from calm import corpus


def test_britannica_is_paragraphs_of_prose_none_from_the_default_corpus():
    docs = corpus.load_documents("britannica")
    assert len(docs) > 100 and sum(len(d.text) for d in docs) > 200_000
    assert all(d.name.startswith("britannica/") for d in docs)
    # the scan's page markers and headers are gone
    assert not any(line.startswith(("#", "p.7")) for d in docs for line in d.text.splitlines())
    assert docs[0].text.startswith("Shakespeare, William (1564--1616)")
    default = {d.text for d in corpus.load_documents("kjv+shakespeare")}
    assert not default & {d.text for d in docs}
    splits = corpus.split_documents(docs)
    assert all(splits[s] for s in corpus.SPLITS) and sum(map(len, splits.values())) == len(docs)
    assert "britannica" in corpus.CORPORA
