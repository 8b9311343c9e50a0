"""Development sessions: ``nox -l`` lists them, ``nox -s tests`` runs one.

Every session installs the project in editable mode with the extras it needs, through the
one helper below, so a session runs the same code a user installs.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


def install(session: nox.Session, *extras: str) -> None:
    """Install the project in editable mode with ``extras`` (names from pyproject.toml)."""
    target = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", target)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite; arguments go to pytest (``nox -s tests -- -k cors``).

    Shared-state tests need Redis on 127.0.0.1:6379 (or ``REDIS_URL``); without it they skip
    with a loud message, and fail under ``CI=true``. ``APIGW_MW_SLOW=1`` adds the slow
    variants. ``nox -s tests --python 3.12`` runs on another installed interpreter.
    """
    install(session, "test")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style: ``ruff check`` and ``ruff format --check``."""
    install(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the library with ``mypy --strict``."""
    install(session, "lint")
    session.run("mypy", "--strict")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with ``mkdocs build --strict``; ``-- serve`` serves it live."""
    install(session, "docs")
    if session.posargs and session.posargs[0] == "serve":
        session.run("mkdocs", "serve", *session.posargs[1:])
    else:
        session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Run the in-process benchmarks; arguments select groups (``nox -s bench -- core``).

    Figures are ratios against the bare app measured in the same run.
    """
    install(session, "bench")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Serve the demo API on 127.0.0.1:8000; arguments go to ``apigw-mw demo``."""
    install(session, "demo")
    session.run("apigw-mw", "demo", *session.posargs)


@nox.session(python=PYTHONS)
def matrix(session: nox.Session) -> None:
    """The test suite on every supported Python that is installed (``nox -s matrix``)."""
    install(session, "test")
    session.run("python", "-m", "pytest", *session.posargs)
