// Drives the router's OpenAI-compatible HTTP API with the official `openai` npm client (pinned in
// package-lock.json, installed by `npm ci` in tools/setup-deps.sh) against a local cluster, and
// checks every answer against the project's own gRPC client, `indexcache client generate`, on the
// same prompt: greedy completions and chats, streamed and not, must return its tokens and text.
// Also: n = 2 and logprobs in both endpoints' shapes, usage and finish_reason, the errors' HTTP statuses, the API key, /v1/models and /health, and
// that a client hanging up mid-stream cancels the request and frees its KV blocks on the decode
// worker.
//
//   node --test openai_api_test.mjs   (env INDEXCACHE = the indexcache binary, MODEL = a model dir)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import OpenAI from 'openai';
import { startCluster } from './cluster.mjs';

const indexcache = process.env.INDEXCACHE;
const model = process.env.MODEL;
assert.ok(indexcache && model, 'set INDEXCACHE (the binary) and MODEL (a model directory)');
const modelId = basename(model);
const apiKey = 'test-key-7f3a';
const scratch = mkdtempSync(join(tmpdir(), 'openai-api-test-'));
// 80 ids: past the model's index_topk (64), so the Shared layers' reuse is exercised.
const promptIds = Array.from({ length: 80 }, (_, i) => 3 + ((i * 37) % 2000));

let cluster;
let addresses;  // router, http, and metrics addresses by service name

const keyFile = join(scratch, 'api-key');  // the router's key, for its HTTP and its gRPC API

function startApiCluster() {
  writeFileSync(keyFile, `${apiKey}\n`);
  const started = startCluster(indexcache, ['--model', model, '--prefill', '1', '--decode', '1', '--threads', '1',
    '--http-port', '0', '--api-key-file', keyFile, '--metrics-port-base', '0']);
  cluster = started.child;
  addresses = started.addresses;
  return started.ready;
}

const client = () => new OpenAI({ apiKey, baseURL: `http://${addresses.http}/v1`, maxRetries: 0 });

// `indexcache client generate --json` over gRPC: the reference every HTTP answer must equal.
function grpcGenerate(args) {
  const out = execFileSync(indexcache, ['client', 'generate', '--router', addresses.router, '--api-key-file', keyFile,
    '--json', ...args]);
  return JSON.parse(out.toString());
}

async function metric(service, name, labels = '') {
  const text = await (await fetch(`http://${addresses[`metrics ${service}`]}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `) || l.startsWith(`${name}${labels}{`));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

async function eventually(what, check, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) assert.fail(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// The documented default chat template (services/openai/chat_template.h), written out here.
function renderChat(messages) {
  return messages.map((m) => `<|${m.role}|>\n${m.content}`).join('') + '<|assistant|>\n';
}
const chatStops = ['<|user|>', '<|system|>', '<|assistant|>'];

before(startApiCluster);
after(() => cluster?.kill('SIGTERM'));

test('greedy completion from token ids equals client generate', async () => {
  const idsFile = join(scratch, 'prompt.json');
  writeFileSync(idsFile, JSON.stringify(promptIds));
  const expected = grpcGenerate(['--input-ids', idsFile, '--temperature', '0', '--max-new-tokens', '12', '--ignore-eos']);
  assert.equal(expected.output_ids.length, 12);
  const response = await client().completions.create({
    model: modelId, prompt: promptIds, max_tokens: 12, temperature: 0, ignore_eos: true, return_token_ids: true,
  });
  assert.equal(response.object, 'text_completion');
  assert.equal(response.model, modelId);
  assert.deepEqual(response.choices[0].token_ids, expected.output_ids);
  assert.equal(response.choices[0].text, expected.text);
  assert.equal(response.choices[0].finish_reason, 'length');
  assert.deepEqual(response.usage, { prompt_tokens: 80, completion_tokens: 12, total_tokens: 92 });
});

test('streamed completion of a text prompt equals client generate', async () => {
  const prompt = 'The quick brown fox jumps over the lazy dog. '.repeat(4);
  const expected = grpcGenerate(['--prompt', prompt, '--temperature', '0', '--max-new-tokens', '20']);
  const stream = await client().completions.create({
    model: modelId, prompt, max_tokens: 20, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  const finishes = [];
  let usage;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'text_completion');
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      text += choice.text;
      if (choice.finish_reason) finishes.push(choice.finish_reason);
    }
  }
  assert.equal(text, expected.text);
  assert.deepEqual(finishes, [expected.finish_reason]);  // the CLI's names are OpenAI's: stop, length
  assert.equal(usage.prompt_tokens, expected.prompt_tokens);
  assert.equal(usage.completion_tokens, expected.generated_tokens);
});

const messages = [
  { role: 'system', content: 'You answer briefly.' },
  { role: 'user', content: 'Where does the river run after the long winter, and who keeps the old bridge?' },
];

test('chat completion, streamed and not, equals client generate on the rendered template', async () => {
  const expected = grpcGenerate(['--prompt', renderChat(messages), '--temperature', '0', '--max-new-tokens', '16',
    ...chatStops.flatMap((s) => ['--stop', s])]);
  const whole = await client().chat.completions.create({ model: modelId, messages, max_tokens: 16, temperature: 0 });
  assert.equal(whole.object, 'chat.completion');
  assert.equal(whole.choices[0].message.role, 'assistant');
  assert.equal(whole.choices[0].message.content, expected.text);
  assert.equal(whole.usage.prompt_tokens, expected.prompt_tokens);
  assert.equal(whole.usage.completion_tokens, expected.generated_tokens);

  const stream = await client().chat.completions.create({
    model: modelId, messages, max_completion_tokens: 16, temperature: 0, stream: true,
  });
  let content = '';
  let role;
  let finish;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    const choice = chunk.choices[0];
    role ??= choice.delta.role;
    content += choice.delta.content ?? '';
    finish ??= choice.finish_reason ?? undefined;
  }
  assert.equal(role, 'assistant');
  assert.equal(content, expected.text);
  assert.equal(finish, whole.choices[0].finish_reason);
});

test('sampling with a seed is reproducible through both APIs', async () => {
  const args = { model: modelId, prompt: promptIds, max_tokens: 10, temperature: 0.8, top_p: 0.9, top_k: 50, seed: 1234,
    ignore_eos: true, return_token_ids: true };
  const first = await client().completions.create(args);
  const second = await client().completions.create(args);
  assert.deepEqual(first.choices[0].token_ids, second.choices[0].token_ids);
  const idsFile = join(scratch, 'prompt-seeded.json');
  writeFileSync(idsFile, JSON.stringify(promptIds));
  const expected = grpcGenerate(['--input-ids', idsFile, '--temperature', '0.8', '--top-p', '0.9', '--top-k', '50',
    '--seed', '1234', '--max-new-tokens', '10', '--ignore-eos']);
  assert.deepEqual(first.choices[0].token_ids, expected.output_ids);
});

// Logprobs as OpenAI documents them, their values the gRPC API's (`client generate --logprobs`), whose
// own values are checked against a float64 reference forward in tests/e2e/choices_logprobs_test.cc.
// Equal up to float summation order: a request batched with others (here its sibling choice) sums in
// another order than one running alone (the engine's "batch = alone" holds within 1e-5 of the logits).
const close = (a, b) => Math.abs(a - b) < 1e-4;

test('n = 2 completions with logprobs: two greedy choices, each equal to client generate', async () => {
  const idsFile = join(scratch, 'prompt-logprobs.json');
  writeFileSync(idsFile, JSON.stringify(promptIds));
  const expected = grpcGenerate(['--input-ids', idsFile, '--temperature', '0', '--max-new-tokens', '8', '--ignore-eos',
    '--logprobs', '3']);
  assert.equal(expected.logprobs.length, 8);
  const response = await client().completions.create({
    model: modelId, prompt: promptIds, max_tokens: 8, temperature: 0, ignore_eos: true, n: 2, logprobs: 3,
    return_token_ids: true,
  });
  assert.deepEqual(response.choices.map((c) => c.index), [0, 1]);
  for (const choice of response.choices) {
    assert.deepEqual(choice.token_ids, expected.output_ids);
    assert.equal(choice.text, expected.text);
    const { tokens, token_logprobs: tokenLogprobs, top_logprobs: top, text_offset: offsets } = choice.logprobs;
    assert.equal(tokens.length, 8);
    assert.equal(tokens.join(''), expected.text);  // every token's text, in order
    expected.logprobs.forEach((want, i) => {
      assert.ok(close(tokenLogprobs[i], want.logprob), `token ${i}: ${tokenLogprobs[i]} vs ${want.logprob}`);
      // The 3 most likely and the chosen one (greedy: among them), keyed by their text.
      assert.ok(Object.keys(top[i]).length <= 4 && Object.keys(top[i]).length >= 1);
      assert.ok(close(top[i][tokens[i]], want.logprob));
      const values = Object.values(top[i]).sort((a, b) => b - a);
      want.top_logprobs.forEach((alt, k) => assert.ok(close(values[k], alt.logprob), `token ${i} rank ${k}`));
    });
    assert.equal(offsets[0], 0);
    for (let i = 1; i < offsets.length; ++i) assert.equal(offsets[i], offsets[i - 1] + Buffer.byteLength(tokens[i - 1]));
  }
  assert.deepEqual(response.usage, { prompt_tokens: 80, completion_tokens: 16, total_tokens: 96 });
});

test('n = 2 chat with logprobs, streamed and not: chunks name their choice, usage counts both', async () => {
  const expected = grpcGenerate(['--prompt', renderChat(messages), '--temperature', '0', '--max-new-tokens', '6',
    '--logprobs', '2', ...chatStops.flatMap((s) => ['--stop', s])]);
  const whole = await client().chat.completions.create({
    model: modelId, messages, max_tokens: 6, temperature: 0, n: 2, logprobs: true, top_logprobs: 2,
  });
  assert.equal(whole.choices.length, 2);
  for (const choice of whole.choices) {
    assert.equal(choice.message.content, expected.text);
    const content = choice.logprobs.content;
    assert.equal(content.length, expected.logprobs.length);
    content.forEach((entry, i) => {
      assert.equal(typeof entry.token, 'string');
      assert.ok(Array.isArray(entry.bytes) && entry.bytes.every((b) => Number.isInteger(b) && b >= 0 && b < 256));
      assert.ok(close(entry.logprob, expected.logprobs[i].logprob));
      assert.equal(entry.top_logprobs.length, 2);
      entry.top_logprobs.forEach((alt, k) => assert.ok(close(alt.logprob, expected.logprobs[i].top_logprobs[k].logprob)));
    });
  }
  assert.equal(whole.usage.completion_tokens, 2 * expected.generated_tokens);
  assert.equal(whole.usage.prompt_tokens, expected.prompt_tokens);

  const stream = await client().chat.completions.create({
    model: modelId, messages, max_tokens: 6, temperature: 0, n: 2, logprobs: true, top_logprobs: 2, stream: true,
    stream_options: { include_usage: true },
  });
  const content = [[], []];
  const text = ['', ''];
  const finishes = [[], []];
  let usage;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      text[choice.index] += choice.delta.content ?? '';
      content[choice.index].push(...(choice.logprobs?.content ?? []));
      if (choice.finish_reason) finishes[choice.index].push(choice.finish_reason);
    }
  }
  for (let i = 0; i < 2; ++i) {
    assert.equal(text[i], expected.text);
    const streamed = content[i].map((e) => e.logprob);
    assert.equal(streamed.length, whole.choices[i].logprobs.content.length);
    whole.choices[i].logprobs.content.forEach((e, t) => assert.ok(close(streamed[t], e.logprob), `choice ${i} token ${t}`));
    assert.deepEqual(finishes[i], [whole.choices[i].finish_reason]);
  }
  assert.deepEqual(usage, whole.usage);
});

test('errors come back in OpenAI shape with the right status', async () => {
  await assert.rejects(client().completions.create({ model: modelId, prompt: 'hi', temperature: -1 }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && /temperature/.test(e.message));
  await assert.rejects(client().completions.create({ model: modelId, prompt: [5000] }),
    (e) => e.status === 400 && /outside the vocabulary/.test(e.message));
  await assert.rejects(client().completions.create({ model: 'no-such-model', prompt: 'hi' }),
    (e) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found');
  for (const n of [17, 2 ** 31 - 1]) {  // the largest is refused before anything is sized by it
    await assert.rejects(client().completions.create({ model: modelId, prompt: 'hi', n }),
      (e) => e.status === 400 && /n must be in \[1, 16\]/.test(e.message));
  }
  await assert.rejects(client().completions.create({ model: modelId, prompt: 'hi', logprobs: 6 }),
    (e) => e.status === 400 && /`logprobs` must be in \[0, 5\]/.test(e.message));
  await assert.rejects(client().chat.completions.create({ model: modelId, messages, logprobs: true, top_logprobs: 21 }),
    (e) => e.status === 400 && /top_logprobs must be in \[0, 20\]/.test(e.message));
  const wrongKey = new OpenAI({ apiKey: 'wrong', baseURL: `http://${addresses.http}/v1`, maxRetries: 0 });
  await assert.rejects(wrongKey.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
  // The gRPC API asks for the same key: without it, `client generate` is refused.
  assert.throws(
    () => execFileSync(indexcache, ['client', 'generate', '--router', addresses.router, '--prompt', 'hi',
      '--max-new-tokens', '1'], { stdio: 'pipe' }),
    (e) => /UNAUTHENTICATED/.test(e.stderr.toString()) && /API key/.test(e.stderr.toString()));
});

test('models and health', async () => {
  const models = [];
  for await (const m of client().models.list()) models.push(m);
  assert.equal(models.length, 1);
  assert.equal(models[0].id, modelId);
  assert.equal(models[0].chat_template, 'default');
  assert.equal(models[0].max_model_len, 8192);
  const health = await fetch(`http://${addresses.http}/health`);  // open to probes: no key
  assert.equal(health.status, 200);
  assert.deepEqual(await health.json(), { status: 'ok' });
});

test('a client hanging up mid-stream cancels the request and frees its KV', async () => {
  const cancelledBefore = await metric('router', 'indexcache_requests_total', '{outcome="cancelled"}');
  const controller = new AbortController();
  const stream = await client().completions.create(
    { model: modelId, prompt: promptIds, max_tokens: 6000, temperature: 0, ignore_eos: true, stream: true },
    { signal: controller.signal });
  let chunks = 0;
  try {
    for await (const chunk of stream) {
      if (chunk.choices[0]?.text) chunks += 1;
      if (chunks === 3) {
        assert.ok(await metric('decode-0', 'indexcache_kv_blocks_used') > 0, 'the request holds KV blocks');
        controller.abort();
        break;
      }
    }
  } catch (e) {
    // The client may end the iteration quietly or with its abort error; nothing else.
    assert.ok(e.name === 'AbortError' || e instanceof OpenAI.APIUserAbortError, e);
  }
  assert.equal(chunks, 3);
  await eventually('the router counts the request cancelled',
    async () => (await metric('router', 'indexcache_requests_total', '{outcome="cancelled"}')) === cancelledBefore + 1);
  await eventually('the decode worker freed every KV block',
    async () => (await metric('decode-0', 'indexcache_kv_blocks_used')) === 0);
});

test('a client hanging up while a non-streamed completion runs cancels it too', async () => {
  // Nothing is written to such a client until the end, so only the server's watch on the socket
  // can notice it left; 8000 tokens would otherwise run on for many seconds.
  const cancelledBefore = await metric('router', 'indexcache_requests_total', '{outcome="cancelled"}');
  const controller = new AbortController();
  const pending = client().completions.create(
    { model: modelId, prompt: promptIds, max_tokens: 8000, temperature: 0, ignore_eos: true },
    { signal: controller.signal });
  await eventually('the request holds KV blocks', async () => (await metric('decode-0', 'indexcache_kv_blocks_used')) > 0);
  controller.abort();
  await assert.rejects(pending, (e) => e instanceof OpenAI.APIUserAbortError || e.name === 'AbortError');
  await eventually('the router counts the request cancelled',
    async () => (await metric('router', 'indexcache_requests_total', '{outcome="cancelled"}')) === cancelledBefore + 1,
    5_000);
  await eventually('the decode worker freed every KV block',
    async () => (await metric('decode-0', 'indexcache_kv_blocks_used')) === 0, 5_000);
});
