"""Python client of an indexcache cluster: one router address, the public indexcache.v1 API."""

import dataclasses
import os
import threading
from typing import Iterable, Optional, Union

import grpc

try:
    from . import generate_pb2, generate_pb2_grpc
except ImportError as missing:  # the stubs are generated, never committed
    raise ImportError(
        "indexcache_client's gRPC stubs are missing: build the CMake target indexcache_client_python "
        "and put <build>/sdk/python on PYTHONPATH, or run "
        "sdk/python/generate_stubs.sh sdk/python/indexcache_client"
    ) from missing

from .results import Chunk, ModelInfo, Result

# The optional SamplingParameters fields that take one value each; `stop` and `stop_token_ids` are
# the repeated ones.
_SCALAR_SAMPLING = ("temperature", "top_k", "top_p", "min_p", "seed", "max_new_tokens", "ignore_eos",
                    "logprobs", "top_logprobs", "n")
_REPEATED_SAMPLING = ("stop", "stop_token_ids")

# A certificate or key: PEM bytes, or the path of a PEM file.
PemSource = Union[bytes, str, os.PathLike]

# Marks "use the client's default timeout" apart from None, which means "no deadline".
_DEFAULT = object()


class ClientError(Exception):
    """A failed call: the gRPC status code (grpc.StatusCode), and a message naming the call and router."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def _call_error(error: grpc.RpcError, call: str, address: str, timeout: Optional[float]) -> ClientError:
    details = error.details() or ""
    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None:
        details = f"deadline of {timeout:g} s exceeded ({details})"
    return ClientError(error.code(), f"{call} on {address}: {details}")


def _build_request(prompt, input_ids, request_id, sampling) -> "generate_pb2.GenerateRequest":
    if (prompt is None) == (input_ids is None):
        raise ValueError("give exactly one of prompt= and input_ids=")
    unknown = set(sampling) - set(_SCALAR_SAMPLING) - set(_REPEATED_SAMPLING)
    if unknown:
        raise TypeError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
    request = generate_pb2.GenerateRequest(request_id=request_id or "")
    if prompt is not None:
        request.text = prompt
    else:
        request.token_ids.ids.extend(int(i) for i in input_ids)
    params = request.sampling
    for name in _SCALAR_SAMPLING:
        # None leaves the field unset (the server's default), never proto3's zero.
        if sampling.get(name) is not None:
            setattr(params, name, sampling[name])
    stop = sampling.get("stop")
    if stop is not None:
        params.stop.extend([stop] if isinstance(stop, str) else stop)
    if sampling.get("stop_token_ids") is not None:
        params.stop_token_ids.extend(int(i) for i in sampling["stop_token_ids"])
    return request


def _read_pem(source: Optional[PemSource]) -> Optional[bytes]:
    """PEM bytes as given, or read from the file a str or path names."""
    if source is None or isinstance(source, bytes):
        return source
    with open(source, "rb") as pem_file:
        return pem_file.read()


def _router_channel(address, tls_ca, tls_server_name, tls_client_cert, tls_client_key) -> grpc.Channel:
    if tls_ca is None:
        if tls_server_name is not None or tls_client_cert is not None or tls_client_key is not None:
            raise ValueError("tls_server_name, tls_client_cert and tls_client_key need tls_ca")
        return grpc.insecure_channel(address)
    if (tls_client_cert is None) != (tls_client_key is None):
        raise ValueError("tls_client_cert and tls_client_key go together")
    credentials = grpc.ssl_channel_credentials(root_certificates=_read_pem(tls_ca),
                                               private_key=_read_pem(tls_client_key),
                                               certificate_chain=_read_pem(tls_client_cert))
    options = [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else None
    return grpc.secure_channel(address, credentials, options=options)


class GenerateStream:
    """The chunks of one Generate call, as an iterator. cancel() (from any thread) ends the call on
    the server and ends the iteration; leaving a `with` block cancels an unfinished stream."""

    def __init__(self, call, address: str, timeout: Optional[float]):
        self._call = call
        self._address = address
        self._timeout = timeout
        self._request_id: Optional[str] = None
        self._saw_final = False
        self._done = False
        self._cancelled = threading.Event()

    @property
    def request_id(self) -> Optional[str]:
        """The id the router gave the request, from the first chunk (sent at admission); None before.
        abort() takes this id; the label passed as request_id alone finds nothing."""
        return self._request_id

    def cancel(self) -> None:
        self._cancelled.set()
        self._call.cancel()

    def __iter__(self) -> "GenerateStream":
        return self

    def __next__(self) -> Chunk:
        if self._done:
            raise StopIteration
        try:
            response = next(self._call)
        except StopIteration:
            self._done = True
            if not self._saw_final and not self._cancelled.is_set():
                raise ClientError(
                    grpc.StatusCode.INTERNAL,
                    f"Generate on {self._address}: the stream ended without a final message",
                ) from None
            raise
        except grpc.RpcError as error:
            self._done = True
            if self._cancelled.is_set() and error.code() == grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise _call_error(error, "Generate", self._address, self._timeout) from None
        chunk = Chunk.from_proto(response)
        if chunk.request_id:
            self._request_id = chunk.request_id
        if chunk.final is not None:
            self._saw_final = True
        return chunk

    def __enter__(self) -> "GenerateStream":
        return self

    def __exit__(self, *exc) -> None:
        if not self._done:
            self.cancel()


class Client:
    """Thread-safe: one gRPC channel shared by every call.

    timeout: deadline in seconds of every call that does not pass its own; None: no deadline.
    connect_timeout: wait this long for the router and raise ClientError(UNAVAILABLE) otherwise;
    None: connect on the first call.
    api_key: the router's API key (its --api-key-file), sent as `authorization: Bearer <key>` on
    every call; None: none.
    tls_ca: TLS to a router that serves it (its --tls-cert-file), trusting these CA certificates:
    PEM bytes, or the path of a PEM file; None: plaintext.
    tls_server_name: the name the router's certificate must carry instead of the address's host.
    tls_client_cert, tls_client_key: this client's certificate chain and key (PEM bytes or file
    paths), for a router that requires client certificates (its --tls-client-ca-file).
    """

    def __init__(self, router_address: str, timeout: Optional[float] = None,
                 connect_timeout: Optional[float] = None, api_key: Optional[str] = None,
                 tls_ca: Optional[PemSource] = None, tls_server_name: Optional[str] = None,
                 tls_client_cert: Optional[PemSource] = None, tls_client_key: Optional[PemSource] = None):
        if not router_address:
            raise ValueError("router address is empty")
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.router_address = router_address
        self._timeout = timeout
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        self._channel = _router_channel(router_address, tls_ca, tls_server_name, tls_client_cert,
                                        tls_client_key)
        self._stub = generate_pb2_grpc.IndexCacheStub(self._channel)
        if connect_timeout is not None:
            try:
                grpc.channel_ready_future(self._channel).result(timeout=connect_timeout)
            except grpc.FutureTimeoutError:
                self._channel.close()
                raise ClientError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"router {router_address} not reachable within {connect_timeout:g} s",
                ) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _resolve_timeout(self, timeout) -> Optional[float]:
        if timeout is _DEFAULT:
            return self._timeout
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        return timeout

    def stream(self, prompt: Optional[str] = None, input_ids: Optional[Iterable[int]] = None, *,
               request_id: Optional[str] = None, timeout=_DEFAULT, **sampling) -> GenerateStream:
        """Starts a request and returns its chunks as they come. Sampling keywords: temperature,
        top_k, top_p, min_p, seed, max_new_tokens, stop (str or list), stop_token_ids, ignore_eos,
        logprobs (bool) and top_logprobs (0-20: each token's log-probability and its most likely
        alternatives), n (1-16 choices; chunks name theirs in `index`); those left out or None take
        the server's defaults. Errors raise ClientError on iteration."""
        request = _build_request(prompt, input_ids, request_id, sampling)
        deadline = self._resolve_timeout(timeout)
        call = self._stub.Generate(request, timeout=deadline, metadata=self._metadata)
        return GenerateStream(call, self.router_address, deadline)

    def generate(self, prompt: Optional[str] = None, input_ids: Optional[Iterable[int]] = None, *,
                 request_id: Optional[str] = None, timeout=_DEFAULT, **sampling) -> Result:
        """Runs a request to its end. A stream the server ends normally returns a Result whatever its
        finish_reason ("stop", "length", "abort", "error"); a failed call raises ClientError."""
        wants_logprobs = bool(sampling.get("logprobs"))
        choices = []  # grown as the stream names them: the router refuses an n out of range first
        request_id_seen = ""
        with self.stream(prompt, input_ids, request_id=request_id, timeout=timeout, **sampling) as chunks:
            for chunk in chunks:
                request_id_seen = chunk.request_id or request_id_seen
                while len(choices) <= chunk.index:
                    choices.append(Result(index=len(choices), logprobs=[] if wants_logprobs else None))
                choice = choices[chunk.index]
                choice.output_ids.extend(chunk.token_ids)
                choice.text += chunk.text
                if wants_logprobs:
                    choice.logprobs.extend(chunk.logprobs)
                if chunk.final is not None:
                    for name in ("finish_reason", "error", "prompt_tokens", "generated_tokens",
                                 "timings", "index_pattern", "prefill_worker", "decode_worker"):
                        setattr(choice, name, getattr(chunk.final, name))
        for choice in choices:
            choice.request_id = request_id_seen
        return dataclasses.replace(choices[0], choices=choices)

    def abort(self, request_id: str, *, timeout=_DEFAULT) -> bool:
        """Aborts a request by id; returns whether the router knew it."""
        deadline = self._resolve_timeout(timeout)
        try:
            response = self._stub.Abort(generate_pb2.AbortRequest(request_id=request_id), timeout=deadline,
                                       metadata=self._metadata)
        except grpc.RpcError as error:
            raise _call_error(error, "Abort", self.router_address, deadline) from None
        return response.found

    def model_info(self, *, timeout=_DEFAULT) -> ModelInfo:
        deadline = self._resolve_timeout(timeout)
        try:
            response = self._stub.ModelInfo(generate_pb2.ModelInfoRequest(), timeout=deadline,
                                           metadata=self._metadata)
        except grpc.RpcError as error:
            raise _call_error(error, "ModelInfo", self.router_address, deadline) from None
        return ModelInfo.from_proto(response)
