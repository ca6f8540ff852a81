"""The precompute_candidates stage: ``items`` x checkpoint -> ``candidate_link_weights(model_version)``."""

from __future__ import annotations

from pipelines.stages.context import (
    PRECOMPUTE_CANDIDATES,
    RunContext,
    StageResult,
    already_done,
    finish,
    skipped,
    timed,
)
from pipelines.tables.audit import audited
from pipelines.tables.schemas import CANDIDATE_LINK_WEIGHTS, ITEMS
from pipelines.tables.spark_rows import first_row
from pipelines.tables.store import TableStore, WriteRequest


def candidates_key(store: TableStore, model_version: str) -> tuple[str, int]:
    """(the commit key of ``model_version``'s candidates built from the current ``items``, the
    ``items`` version): the stage commits once per key."""
    items_version = store.version(ITEMS)
    if items_version is None:
        from pipelines.errors import TableNotFoundError

        raise TableNotFoundError("items", store.uri("items"))
    # the table id too: a dropped and re-created items table starts again at version 0
    return (f"{PRECOMPUTE_CANDIDATES}:model_version={model_version}"
            f":items={store.table_id(ITEMS)}@v{items_version}"), items_version


def skip_if_current(store: TableStore, ds: str, run_id: str, model_version: str) -> StageResult | None:
    """The stage's result, skipped and audited, when ``model_version``'s candidates were built from
    the current ``items``; None (nothing written) when they must be built.  Reads the table logs
    only, so a job can decide before it starts a Spark session."""
    app_id, items_version = candidates_key(store, model_version)
    if store.committed_version(CANDIDATE_LINK_WEIGHTS, app_id) is None:
        return None
    with audited(store, PRECOMPUTE_CANDIDATES, ds, run_id) as record:
        record.model_version = model_version
        record.metrics["items_version"] = items_version
        return skipped(record, ds, CANDIDATE_LINK_WEIGHTS.name, app_id)


def precompute_candidates(ctx: RunContext, device: str = "auto") -> StageResult:
    """Skipped when this model version's candidates were built from the current catalogue version."""
    from pyspark.sql import functions as F

    from pipelines.errors import EmptyCatalogueError
    from pipelines.runtime.candidate_matrix import candidate_rows, catalogue_in_vocabulary

    app_id, items_version = candidates_key(ctx.store, ctx.model_version)
    with audited(ctx.store, PRECOMPUTE_CANDIDATES, ctx.ds, ctx.run_id) as record:
        record.model_version = ctx.model_version
        record.metrics["items_version"] = items_version
        done = already_done(ctx, record, CANDIDATE_LINK_WEIGHTS.name, app_id)
        if done:
            return done
        items = ctx.store.read_table("items")
        ids = catalogue_in_vocabulary(items, ctx.vocabulary()).persist()
        try:
            catalogue = ids.count()
            read = first_row(items.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("item_id").alias("ids")),
                             "the count of items")
            record.count("items_read", read["rows"])
            record.count("items_null_or_duplicate", read["rows"] - read["ids"])
            record.count("items_unknown_to_model", read["ids"] - catalogue)
            record.count("candidates", catalogue)
            if catalogue == 0:
                raise EmptyCatalogueError(
                    f"table 'items' has {read['rows']} row(s), {read['ids']} distinct item_id(s), none of them "
                    f"in the vocabulary of model {ctx.model_version}: nothing to score"
                )
            rows = candidate_rows(ids.repartition(max(1, min(ctx.spark.sparkContext.defaultParallelism,
                                                            catalogue // 4096 + 1))),
                                  ctx.checkpoint_path, ctx.model_version, device)
            request = WriteRequest(CANDIDATE_LINK_WEIGHTS, "overwrite", app_id,
                                   partition={"model_version": ctx.model_version},
                                   metadata={"items_version": items_version})
            commit = timed(record, "write", lambda: ctx.store.write(rows, request))
        finally:
            ids.unpersist()
        return finish(record, commit)


def catalogue_size(ctx: RunContext) -> int:
    """Items of ``items`` the model can score: what precompute_candidates will write (one Spark pass)."""
    from pipelines.errors import TableNotFoundError
    from pipelines.runtime.candidate_matrix import catalogue_in_vocabulary

    if ctx.store.version(ITEMS) is None:
        raise TableNotFoundError("items", ctx.store.uri("items"))
    return int(catalogue_in_vocabulary(ctx.store.read_table("items"), ctx.vocabulary()).count())
