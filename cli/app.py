"""The ``ctpreg`` command: assembles the sub-commands; no logic of its own."""

from __future__ import annotations

import typer

from ctpreg.registry.settings import Settings

from .commands import admin, demo, generate, peft, prompts, proxy, report, resolve, serve, train
from .state import CliState

app = typer.Typer(
    name="ctpreg",
    help=(
        "Registry and transfer service for soft prompts that recover compressed LLMs.\n\n"
        "Configure with CTPREG_HOME, CTPREG_DB_URL, CTPREG_STORE_URL, CTPREG_S3_ENDPOINT_URL, CTPREG_CACHE_DIR, "
        "CTPREG_OFFLINE; CTPREG_URL and CTPREG_TOKEN for a registry served by `ctpreg serve` (see README)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _configure(ctx: typer.Context) -> None:
    ctx.obj = CliState(Settings.from_env())


app.command()(prompts.publish)
app.command("list")(prompts.list_prompts)
app.command()(prompts.show)
app.command()(prompts.fetch)
app.command()(resolve.resolve)
app.command()(prompts.deprecate)
app.command()(admin.gc)
app.command()(admin.reindex)
app.command()(train.compress)
app.command()(train.train)
app.command("eval")(train.evaluate)
app.command()(demo.demo)
app.command()(report.report)
app.command()(generate.generate)
app.command()(proxy.proxy)
app.command()(serve.serve)
app.command()(peft.export)
app.command("import")(peft.import_)
app.add_typer(prompts.alias_app, name="alias")
app.add_typer(admin.models_app, name="models")
app.add_typer(admin.db_app, name="db")
app.add_typer(serve.tokens_app, name="tokens")
