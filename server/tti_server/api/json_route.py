"""JSON in and out for the generation routes.

`ValidatedJSONRoute` is a route class for
`async def endpoint(body: Model, request: Request) -> Response`.

FastAPI reads such a body in many steps per request: the content type parsed with
`email.message`, `json.loads`, dependency solving, then validation of the
resulting dict, each wrapped in telemetry and exit stacks. For a stub request
that was a third of the server's Python work (about 165 000 instructions of
~1.65 million, counted with callgrind; tests/benchmarks/bench_stub_server.py has
the throughput side). This route parses and validates the raw bytes in one
pydantic-core call instead.

What a client sees does not change: the same checks (strict types, extra fields,
a JSON content type), errors raised as FastAPI's `RequestValidationError` with
`body` leading each location, so the one error envelope reports them as before.
FastAPI still builds the OpenAPI schema from the endpoint's signature. A route
whose endpoint takes anything else (dependencies, query parameters, no body) is
an ordinary `APIRoute`.

`CaikitRoute` reads bodies as the caikit runtime does: schema errors are 422, a
`multipart/form-data` body is read as caikit reads forms (below), and any other
media type is 415.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response

from tti_server.errors import HTTPOnlyError

Endpoint = Callable[[Any, Request], Awaitable[Response]]

#: What FastAPI reports for a body that is absent or not sent as JSON.
_MISSING = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
_NOT_AN_OBJECT = {
    "type": "model_attributes_type",
    "loc": ("body",),
    "msg": "Input should be a valid dictionary or object to extract fields from",
}


class ValidatedJSONRoute(APIRoute):
    #: The status of a body that does not fit the schema (read by the error handler).
    schema_error_status = 400
    #: Whether a `multipart/form-data` body is read too (else only JSON).
    reads_forms = False

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if self._body_model() is not None and self.max_body_size is None:
            # Starlette's wrapper: FastAPI's adds exit stacks that only dependencies use.
            self.app = request_response(self.get_route_handler())

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        model = self._body_model()
        if model is None:
            return super().get_route_handler()
        return _validated_json_handler(model, self.endpoint, self.reads_forms)

    def _body_model(self) -> type[BaseModel] | None:
        """The endpoint's body model when the endpoint takes exactly (body, request)."""
        dependant = self.dependant
        others = (
            dependant.path_params,
            dependant.query_params,
            dependant.header_params,
            dependant.cookie_params,
            dependant.dependencies,
        )
        if len(dependant.body_params) != 1 or any(others) or not dependant.request_param_name:
            return None
        model = dependant.body_params[0].field_info.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        return model


class CaikitRoute(ValidatedJSONRoute):
    schema_error_status = 422
    reads_forms = True


def _validated_json_handler(
    model: type[BaseModel], endpoint: Endpoint, reads_forms: bool
) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    async def handle(request: Request) -> Response:
        content_type = request.headers.get("content-type")
        if reads_forms and is_form_media_type(content_type):
            return await endpoint(await _validated_form(model, request), request)
        raw = await request.body()
        if not raw:
            raise RequestValidationError([dict(_MISSING)])
        if not is_json_media_type(content_type):
            if reads_forms:
                raise HTTPOnlyError(
                    f"content-type: cannot read {content_type or 'a body without one'}; "
                    "send application/json or multipart/form-data",
                    415,
                )
            raise RequestValidationError([{**_NOT_AN_OBJECT, "input": raw}])
        try:
            body = model.model_validate_json(raw)
        except ValidationError as exc:
            raise RequestValidationError(_located_in_body(exc)) from None
        return await endpoint(body, request)

    return handle


async def _validated_form(model: type[BaseModel], request: Request) -> BaseModel:
    """A form read as the caikit runtime reads one.

    One field per key; a dotted key sets a nested field (`parameters.height`); a
    nested model may also come whole as one JSON field (`parameters`); empty fields
    are skipped. Values are strings, coerced like JSON values (`"64"` is 64).
    """
    async with request.form() as form:
        data = await _form_dict(model, form)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(_located_in_body(exc)) from None


async def _form_dict(model: type[BaseModel], form: FormData) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, item in form.multi_items():
        value = await item.read() if isinstance(item, UploadFile) else item
        if not value:
            continue
        *parents, leaf = key.split(".")
        target = data
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                break
        if not isinstance(target, dict) or leaf in target:
            raise RequestValidationError([_form_error(key, "given more than once")])
        if isinstance(value, str) and _is_model_field(model, key.split(".")):
            value = _json_or_text(value)
        target[leaf] = value
    return data


def _is_model_field(model: type[BaseModel], path: list[str]) -> bool:
    """Whether the field at `path` holds a nested model (given as one JSON form field)."""
    annotation: Any = model
    for part in path:
        field = _model_in(annotation)
        if field is None or part not in field.model_fields:
            return False
        annotation = field.model_fields[part].annotation
    return _model_in(annotation) is not None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model in `Model` or `Model | None`."""
    candidates = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    for candidate in (annotation, *candidates):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value  # the model's validation names the field


def _form_error(key: str, message: str) -> dict[str, Any]:
    return {"type": "value_error", "loc": ("body", *key.split(".")), "msg": message}


def is_form_media_type(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "multipart/form-data"


def is_json_media_type(content_type: str | None) -> bool:
    """`application/json` or `application/<anything>+json`, parameters ignored (as FastAPI)."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _located_in_body(exc: ValidationError) -> list[dict[str, Any]]:
    return [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]


def json_response(content: Any) -> Response:
    """Compact JSON by pydantic-core: a third of `json.dumps`'s time for base64 images."""
    return Response(to_json(content), media_type="application/json")
