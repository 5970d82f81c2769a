"""The Python client against a scripted fake router (grpc.server in this process): what the client
sends is checked on the server side (unset sampling fields stay unset), what the server sends on the
client side, and so are cancellation, deadlines and error statuses.

    PYTHONPATH=<build>/sdk/python /usr/bin/python3 -m unittest discover -s sdk/python/tests
"""

import os
import subprocess
import tempfile
import threading
import time
import unittest
from concurrent import futures

import grpc

from indexcache_client import Client, ClientError
from indexcache_client import generate_pb2, generate_pb2_grpc


def _chunk(ids, text):
    return generate_pb2.GenerateResponse(request_id="req-42", token_ids=ids, text=text)


class FakeIndexCache(generate_pb2_grpc.IndexCacheServicer):
    """Each prompt text names a script; token-id prompts get the "three chunks" one."""

    def __init__(self):
        self.requests = []
        self.aborted = []
        self.cancel_seen = threading.Event()

    def Generate(self, request, context):
        self.requests.append(request)
        script = request.text
        if script == "reject":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prompt is empty")
        if script == "busy":
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        if script == "hang":
            # Holds the call open until the client cancels or its deadline passes; the callback runs
            # when the call ends, also when that happens while the first chunk is still being sent
            # (then grpc never resumes this generator).
            context.add_callback(self.cancel_seen.set)
            yield _chunk([1], "a")
            give_up = time.monotonic() + 20
            while context.is_active() and time.monotonic() < give_up:
                time.sleep(0.005)
            return
        if script == "no final":
            yield _chunk([1], "a")
            return
        if script == "two choices":
            # Interleaved, as the router merges them; each choice ends with its own final.
            for index, ids in ((1, [8]), (0, [5]), (0, [6]), (1, [9])):
                chunk = _chunk(ids, "")
                chunk.index = index
                entry = chunk.logprobs.add(token_id=ids[0], logprob=-0.5 * ids[0])
                entry.top_logprobs.add(token_id=ids[0], logprob=-0.5 * ids[0])
                yield chunk
            for index in (0, 1):
                last = _chunk([], "")
                last.index = index
                last.final.finish_reason = generate_pb2.LENGTH
                last.final.generated_tokens = 2
                yield last
            return
        if script == "failed":
            last = _chunk([4], "x")
            last.final.finish_reason = generate_pb2.ERROR
            last.final.error = "decode worker lost"
            yield last
            return
        yield _chunk([5, 6], "he")
        yield _chunk([7], "llo")
        last = _chunk([], "")
        last.final.finish_reason = generate_pb2.LENGTH
        last.final.prompt_tokens = 4
        last.final.generated_tokens = 3
        last.final.timings.first_token_seconds = 0.25
        last.final.timings.handoff_seconds = 0.125
        last.final.index_pattern = "FSFS"
        last.final.decode_worker = "decode-0"
        yield last

    def Abort(self, request, context):
        self.aborted.append(request.request_id)
        return generate_pb2.AbortResponse(found=request.request_id == "known-id")

    def ModelInfo(self, request, context):
        return generate_pb2.ModelInfoResponse(
            architecture="GlmMoeDsaForCausalLM", num_layers=16, index_pattern="FSSSFSSSFSSSFSSS",
            num_full_layers=4, max_context=4096, has_tokenizer=True, decode_workers=2,
            length_patterns="8192:FSSSSSSSFSSSSSSS")


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeIndexCache()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        generate_pb2_grpc.add_IndexCacheServicer_to_server(self.fake, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.address = f"127.0.0.1:{port}"
        self.client = Client(self.address, connect_timeout=5)

    def tearDown(self):
        self.client.close()
        self.server.stop(grace=None).wait()

    def test_generate_collects_every_chunk_and_the_final_info(self):
        result = self.client.generate("three chunks")
        self.assertEqual(result.request_id, "req-42")
        self.assertEqual(result.output_ids, [5, 6, 7])
        self.assertEqual(result.text, "hello")
        self.assertEqual(result.finish_reason, "length")
        self.assertEqual(result.prompt_tokens, 4)
        self.assertEqual(result.generated_tokens, 3)
        self.assertEqual(result.timings.first_token_seconds, 0.25)
        self.assertEqual(result.timings.handoff_seconds, 0.125)
        self.assertEqual(result.index_pattern, "FSFS")
        self.assertEqual(result.decode_worker, "decode-0")
        as_json = result.to_dict()
        self.assertEqual(as_json["output_ids"], [5, 6, 7])
        self.assertEqual(as_json["timings"]["first_token_seconds"], 0.25)

    def test_choices_and_logprobs_are_collected_per_index(self):
        result = self.client.generate("two choices", n=2, logprobs=True, top_logprobs=1)
        sent = self.fake.requests[-1].sampling
        self.assertEqual((sent.n, sent.logprobs, sent.top_logprobs), (2, True, 1))
        self.assertEqual([c.index for c in result.choices], [0, 1])
        self.assertEqual(result.choices[0].output_ids, [5, 6])
        self.assertEqual(result.choices[1].output_ids, [8, 9])
        self.assertEqual(result.output_ids, [5, 6])  # the result itself is choice 0
        self.assertEqual([(t.token_id, t.logprob) for t in result.choices[1].logprobs], [(8, -4.0), (9, -4.5)])
        self.assertEqual(result.choices[1].logprobs[0].top_logprobs, [(8, -4.0)])
        self.assertEqual(result.choices[1].finish_reason, "length")
        as_json = result.to_dict()
        self.assertEqual([c["output_ids"] for c in as_json["choices"]], [[5, 6], [8, 9]])
        self.assertEqual(as_json["logprobs"][1], {"token_id": 6, "logprob": -3.0,
                                                  "top_logprobs": [{"token_id": 6, "logprob": -3.0}]})

    def test_stream_delivers_chunks_in_order(self):
        stream = self.client.stream(input_ids=[3, 1, 4])
        chunks = list(stream)
        self.assertEqual([c.token_ids for c in chunks], [[5, 6], [7], []])
        self.assertEqual([c.text for c in chunks], ["he", "llo", ""])
        self.assertEqual([c.final is not None for c in chunks], [False, False, True])
        self.assertEqual(chunks[-1].final.finish_reason, "length")
        self.assertEqual(stream.request_id, "req-42")
        self.assertEqual(list(stream), [])  # the end is sticky

    def test_cancel_from_another_thread_ends_the_stream_and_the_server_sees_it(self):
        stream = self.client.stream("hang")
        self.assertEqual(next(stream).token_ids, [1])
        threading.Timer(0.1, stream.cancel).start()
        self.assertEqual(list(stream), [])  # blocked until the cancel, then ends
        self.assertTrue(self.fake.cancel_seen.wait(5))

    def test_leaving_a_with_block_cancels_an_unfinished_stream(self):
        with self.client.stream("hang") as stream:
            next(stream)
        self.assertTrue(self.fake.cancel_seen.wait(5))

    def test_per_call_timeout_is_deadline_exceeded_with_context(self):
        start = time.monotonic()
        with self.assertRaises(ClientError) as raised:
            self.client.generate("hang", timeout=0.2)
        self.assertLess(time.monotonic() - start, 5)
        self.assertEqual(raised.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertIn(f"Generate on {self.address}", str(raised.exception))
        self.assertIn("deadline of 0.2 s", str(raised.exception))
        self.assertTrue(self.fake.cancel_seen.wait(5))

    def test_client_default_timeout_applies_when_the_call_sets_none(self):
        with Client(self.address, timeout=0.15) as client:
            with self.assertRaises(ClientError) as raised:
                client.generate("hang")
        self.assertEqual(raised.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertIn("deadline of 0.15 s", str(raised.exception))

    def test_server_statuses_keep_their_code_and_message(self):
        with self.assertRaises(ClientError) as raised:
            self.client.generate("reject")
        self.assertEqual(raised.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("prompt is empty", str(raised.exception))
        self.assertIn(self.address, str(raised.exception))
        with self.assertRaises(ClientError) as raised:
            self.client.generate("busy")
        self.assertEqual(raised.exception.code, grpc.StatusCode.RESOURCE_EXHAUSTED)

    def test_stream_without_final_message_is_an_error(self):
        with self.assertRaises(ClientError) as raised:
            self.client.generate("no final")
        self.assertEqual(raised.exception.code, grpc.StatusCode.INTERNAL)
        self.assertIn("without a final message", str(raised.exception))

    def test_finish_reason_error_is_reported_in_the_result(self):
        result = self.client.generate("failed")
        self.assertEqual(result.finish_reason, "error")
        self.assertEqual(result.error, "decode worker lost")
        self.assertEqual(result.output_ids, [4])

    def test_unset_sampling_fields_stay_unset_on_the_wire(self):
        self.client.generate("three chunks", temperature=None)
        sent = self.fake.requests[-1]
        self.assertEqual(sent.WhichOneof("input"), "text")
        self.assertEqual(sent.request_id, "")
        for field in ("temperature", "top_k", "top_p", "min_p", "seed", "max_new_tokens", "ignore_eos"):
            self.assertFalse(sent.sampling.HasField(field), field)
        self.assertEqual(list(sent.sampling.stop), [])
        self.assertEqual(list(sent.sampling.stop_token_ids), [])

    def test_set_sampling_fields_are_sent_even_when_zero(self):
        self.client.generate(input_ids=[3, 1, 4], request_id="mine", temperature=0, seed=0,
                             max_new_tokens=3, ignore_eos=False, stop="\n\n", stop_token_ids=[2])
        sent = self.fake.requests[-1]
        self.assertEqual(list(sent.token_ids.ids), [3, 1, 4])
        self.assertEqual(sent.request_id, "mine")
        self.assertTrue(sent.sampling.HasField("temperature"))
        self.assertEqual(sent.sampling.temperature, 0.0)
        self.assertTrue(sent.sampling.HasField("seed"))
        self.assertEqual(sent.sampling.max_new_tokens, 3)
        self.assertTrue(sent.sampling.HasField("ignore_eos"))
        self.assertFalse(sent.sampling.HasField("top_k"))
        self.assertEqual(list(sent.sampling.stop), ["\n\n"])
        self.assertEqual(list(sent.sampling.stop_token_ids), [2])

    def test_malformed_calls_are_refused_before_sending(self):
        with self.assertRaises(ValueError):
            self.client.generate("a", input_ids=[1])
        with self.assertRaises(ValueError):
            self.client.generate()
        with self.assertRaises(TypeError):
            self.client.generate("a", temprature=0.5)
        with self.assertRaises(ValueError):
            self.client.generate("a", timeout=0)
        self.assertEqual(self.fake.requests, [])

    def test_abort_reports_whether_the_router_knew_the_id(self):
        self.assertTrue(self.client.abort("known-id"))
        self.assertFalse(self.client.abort("other"))
        self.assertEqual(self.fake.aborted, ["known-id", "other"])

    def test_model_info_is_mirrored(self):
        info = self.client.model_info()
        self.assertEqual(info.architecture, "GlmMoeDsaForCausalLM")
        self.assertEqual(info.num_layers, 16)
        self.assertEqual(info.index_pattern, "FSSSFSSSFSSSFSSS")
        self.assertEqual(info.num_full_layers, 4)
        self.assertEqual(info.length_patterns, "8192:FSSSSSSSFSSSSSSS")
        self.assertEqual(info.max_context, 4096)
        self.assertTrue(info.has_tokenizer)
        self.assertEqual(info.decode_workers, 2)


class UnreachableRouterTest(unittest.TestCase):
    def test_connect_timeout_raises_unavailable(self):
        with self.assertRaises(ClientError) as raised:
            Client("127.0.0.1:1", connect_timeout=0.2)
        self.assertEqual(raised.exception.code, grpc.StatusCode.UNAVAILABLE)

    def test_lazy_client_fails_on_the_call_with_its_context(self):
        with Client("127.0.0.1:1") as client:
            with self.assertRaises(ClientError) as raised:
                client.generate("x")
        self.assertEqual(raised.exception.code, grpc.StatusCode.UNAVAILABLE)
        self.assertIn("Generate on 127.0.0.1:1", str(raised.exception))



# The test certificates (a CA, a router's and a client's certificate it signed, another CA) come from
# the build's write_test_certificates, made with OpenSSL's libcrypto as the C++ tests' are.
_CERTIFICATE_WRITER = os.environ.get("INDEXCACHE_WRITE_TEST_CERTIFICATES")


@unittest.skipUnless(_CERTIFICATE_WRITER, "INDEXCACHE_WRITE_TEST_CERTIFICATES names no certificate writer")
class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.directory = tempfile.TemporaryDirectory()
        subprocess.run([_CERTIFICATE_WRITER, cls.directory.name], check=True)

    @classmethod
    def tearDownClass(cls):
        cls.directory.cleanup()

    def pem(self, name):
        with open(self.path(name), "rb") as pem_file:
            return pem_file.read()

    def path(self, name):
        return os.path.join(self.directory.name, name)

    def serve(self, require_client_certificate=False):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        generate_pb2_grpc.add_IndexCacheServicer_to_server(FakeIndexCache(), server)
        credentials = grpc.ssl_server_credentials(
            [(self.pem("router.key"), self.pem("router.crt"))],
            root_certificates=self.pem("ca.crt") if require_client_certificate else None,
            require_client_auth=require_client_certificate)
        port = server.add_secure_port("127.0.0.1:0", credentials)
        server.start()
        self.addCleanup(lambda: server.stop(grace=None).wait())
        return f"127.0.0.1:{port}"

    def generate(self, address, **tls):
        with Client(address, timeout=5, **tls) as client:
            return client.generate("three chunks")

    def test_a_client_trusting_the_ca_is_served_and_others_are_not(self):
        address = self.serve()
        self.assertEqual(self.generate(address, tls_ca=self.path("ca.crt")).text, "hello")
        self.assertEqual(self.generate(address, tls_ca=self.pem("ca.crt"), tls_server_name="localhost").text, "hello")
        for refused in ({}, {"tls_ca": self.path("other-ca.crt")},
                        {"tls_ca": self.path("ca.crt"), "tls_server_name": "router.example.com"}):
            with self.assertRaises(ClientError) as raised:
                self.generate(address, **refused)
            self.assertEqual(raised.exception.code, grpc.StatusCode.UNAVAILABLE, refused)

    def test_a_client_certificate_is_presented_when_given(self):
        address = self.serve(require_client_certificate=True)
        with self.assertRaises(ClientError):
            self.generate(address, tls_ca=self.path("ca.crt"))
        result = self.generate(address, tls_ca=self.path("ca.crt"), tls_client_cert=self.path("client.crt"),
                               tls_client_key=self.path("client.key"))
        self.assertEqual(result.text, "hello")

    def test_tls_options_without_a_ca_or_half_a_client_identity_are_refused(self):
        with self.assertRaises(ValueError):
            Client("127.0.0.1:1", tls_server_name="localhost")
        with self.assertRaises(ValueError):
            Client("127.0.0.1:1", tls_ca=self.path("ca.crt"), tls_client_cert=self.path("client.crt"))


if __name__ == "__main__":
    unittest.main()
