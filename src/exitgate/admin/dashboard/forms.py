"""Reading posted forms: every field a string, converted here with a message naming the
field, then validated by the admin API's own schemas (one set of bounds for UI and API)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.responses import RedirectResponse
from pydantic import ValidationError
from starlette.datastructures import FormData

from exitgate.admin.dashboard.auth import checked_form

Form = Annotated[FormData, Depends(checked_form)]


def field(form: FormData, name: str) -> str:
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def opt_int(form: FormData, name: str) -> int | None:
    text = field(form, name)
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}: a whole number") from None


def opt_float(form: FormData, name: str) -> float | None:
    text = field(form, name)
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name}: a number") from None


def problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return str(exc)


def back(to: str) -> RedirectResponse:
    return RedirectResponse(to, status_code=303)
