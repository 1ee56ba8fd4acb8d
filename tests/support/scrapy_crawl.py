"""Run one Scrapy crawl through exitgate's middleware; a subprocess of tests/e2e/test_scrapy.py.

    python scrapy_crawl.py CONFIG_JSON OUT_JSON

CONFIG: {"urls": [...], "settings": {...}, "session_keys": [... or null]}. Writes
{"results": [{i, status, session, body, retries, backoffs}], "stats": {...}} to OUT.
A subprocess, because a Twisted reactor runs once per process.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy.http import Response


def main() -> None:
    config = json.loads(sys.argv[1])
    results: list[dict[str, Any]] = []

    class Probe(scrapy.Spider):
        name = "probe"

        async def start(self) -> AsyncIterator[scrapy.Request]:
            keys = config.get("session_keys") or [None] * len(config["urls"])
            for i, (url, key) in enumerate(zip(config["urls"], keys, strict=True)):
                meta = {} if key is None else {"exitgate_session_key": key}
                yield scrapy.Request(url, meta=meta, dont_filter=True, cb_kwargs={"i": i})

        def parse(self, response: Response, i: int) -> None:
            meta = response.meta
            results.append({
                "i": i,
                "status": response.status,
                "session": meta.get("exitgate_session_id"),
                "body": response.text,
                "retries": meta.get("exitgate_retries", 0),
                "backoffs": meta.get("exitgate_backoffs", 0),
            })

    settings = {
        "DOWNLOADER_MIDDLEWARES": {"exitgate.client.scrapy.ExitgateMiddleware": 740},
        "LOG_LEVEL": "WARNING",
        "TELNETCONSOLE_ENABLED": False,
        "REMOTE_CONTROL_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "RETRY_ENABLED": False,  # every retry seen is the middleware's own
        "HTTPERROR_ALLOW_ALL": True,
        "CONCURRENT_REQUESTS": 1,
        **config["settings"],
    }
    process = CrawlerProcess(settings)
    crawler = process.create_crawler(Probe)
    process.crawl(crawler)
    process.start()
    stats = crawler.stats.get_stats() if crawler.stats is not None else {}
    with open(sys.argv[2], "w", encoding="utf-8") as fh:
        json.dump({"results": results, "stats": stats}, fh, default=str)


if __name__ == "__main__":
    main()
