"""Semantic image search: embed a collection, index it with FAISS, query it from the CLI or a web page.

* :mod:`.embed`: ``cliplab embed``, a folder of embedding parts + Parquet metadata, resumable;
* :mod:`.collection`: embedding folders read back (memory-mapped vectors, metadata);
* :mod:`.index`: ``cliplab index``, exact or approximate FAISS indexes with measured recall;
* :mod:`.searcher`: text / image / by-id queries and thumbnails over an index (``cliplab search``);
* :mod:`.service`: ``cliplab serve``, the FastAPI JSON API and the page in ``static/``.

Needs the ``search`` extra (faiss-cpu, pyarrow; fastapi, uvicorn, python-multipart to serve).
"""
