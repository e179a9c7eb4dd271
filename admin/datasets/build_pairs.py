"""The preference format's first steps of a dataset build: stored exchanges -> scrubbed,
deduplicated preference pairs in the spool (admin/datasets/build.py does the rest).

Read: every answered exchange in the selection's scope, rated or not (unrated ones can carry
candidates or corrections), in batches; per batch, the candidates of those exchanges and, when
a `CorrectionLookup` is given, their corrections. Pairs by source (admin/datasets/pairs.py):
corrections and candidates as each exchange is read, opposite ratings once all are read.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from admin.datasets import examples as ex
from admin.datasets.files import Spool, dumps_line
from admin.datasets.pairs import (
    CorrectionLookup,
    OppositeRatings,
    Pair,
    candidate_pairs,
    correction_pair,
)
from chatapp.store import RatedFilter

if TYPE_CHECKING:
    from admin.datasets.build import Builder, _Record


class PairReader:
    def __init__(self, builder: Builder, corrections: CorrectionLookup | None) -> None:
        self.b, self.corrections = builder, corrections
        self.records: list[_Record] = []
        self.strata: dict[str, str] = {}  # group -> the source of its first pair

    async def spool(self, spool: Spool) -> tuple[list[_Record], dict[str, str]]:
        b = self.b
        which = RatedFilter(scope=b.opts.selection, ratings=(1, 0), unrated=True)
        b.progress.stage("reading exchanges", await b.store.exchanges.count_rated(which))
        opposite = OppositeRatings()
        async for batch in b.store.exchanges.rated(which, b.opts.batch):
            ids = [str(row.id) for row in batch]
            candidates = await b.store.candidates.of_exchanges(ids)
            corrected = await self.corrections(ids) if self.corrections is not None else {}
            for row in batch:
                b.counts.exchanges_read += 1
                try:
                    prompt = ex.sent_messages(row)
                except ex.Skip as skip:
                    b._skipped(skip)
                    continue
                opposite.add(row, prompt)
                text = corrected.get(str(row.id))
                pair = correction_pair(row, prompt, text) if text is not None else None
                if pair is not None:
                    self._keep(pair, spool)
                for pair in candidate_pairs(prompt, candidates.get(str(row.id), [])):
                    self._keep(pair, spool)
            b.progress.advance(len(batch))
        for pair in opposite.pairs():
            self._keep(pair, spool)
        b.counts.kept = len(self.records)
        return self.records, self.strata

    def _keep(self, pair: Pair, spool: Spool) -> None:
        b = self.b
        b.counts.candidates += 1
        b.counts.pairs_found[pair.source] += 1
        line = self._admit(pair)
        if line is None:
            return
        at, length = spool.put(line)
        group = pair.group
        self.strata.setdefault(group, pair.source)
        self.records.append(_record(at, length, group, pair))
        b.counts.pairs_kept[pair.source] += 1

    def _admit(self, pair: Pair) -> bytes | None:
        """Scrub every text, then dedupe on the prompt and both replies (as the sft format
        dedupes examples): the line to spool, or None when the pair is left out."""
        from admin.datasets.build import _scrub

        b = self.b
        found: Counter[str] = Counter()

        def clean(text: str) -> str:
            result = _scrub(text)
            found.update(result.counts)
            return result.text if result.found else text

        for m in pair.prompt:
            if m["role"] in ("user", "assistant"):
                m["content"] = clean(m["content"])
        pair.preferred, pair.non_preferred = clean(pair.preferred), clean(pair.non_preferred)
        if b.pii_dropped(found):
            return None
        try:
            line = dumps_line(pair.as_line())
        except UnicodeEncodeError:
            b.counts.skipped["invalid_unicode"] += 1
            b._note(f"skipped: pair of {', '.join(pair.exchange_ids)}: text holding a lone"
                    " UTF-16 surrogate")
            return None
        key = ex.exact_key(line)
        if key in b._seen_exact:
            b.counts.exact_duplicates += 1
            return None
        b._seen_exact.add(key)
        if b.opts.near_dedupe:
            near = ex.near_key([*pair.prompt, {"role": "preferred", "content": pair.preferred},
                                {"role": "non_preferred", "content": pair.non_preferred}])
            if near in b._seen_near:
                b.counts.near_duplicates += 1
                return None
            b._seen_near.add(near)
        return line


def _record(at: int, length: int, group: str, pair: Pair) -> _Record:
    from admin.datasets.build import _Record

    return _Record(at, length, group, None, pair.exchange_ids, pair.source)
