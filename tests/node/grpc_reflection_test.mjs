// Every service of a local cluster through gRPC's own Node.js client and nothing of this project's:
// server reflection (grpc.reflection.v1alpha, the protocol grpcurl speaks) lists the services, the
// router's API is then called through descriptors fetched by reflection alone, and grpc.health.v1
// answers per service name. Also `--version` and the `indexcache_build_info` gauge, checked against
// the git checkout the binary was built from.
//
//   node --test grpc_reflection_test.mjs   (env INDEXCACHE = the indexcache binary, MODEL = a model dir)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { startCluster } from './cluster.mjs';

const require = createRequire(import.meta.url);
const indexcache = process.env.INDEXCACHE;
const model = process.env.MODEL;
assert.ok(indexcache && model, 'set INDEXCACHE (the binary) and MODEL (a model directory)');
const sourceDir = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

const reflectionProto = join(dirname(require.resolve('@grpc/reflection/package.json')),
  'build/proto/grpc/reflection/v1alpha/reflection.proto');
const healthProto = join(dirname(require.resolve('grpc-health-check/package.json')), 'proto/health/v1/health.proto');
const load = (file) => grpc.loadPackageDefinition(protoLoader.loadSync(file, { keepCase: true, longs: Number, enums: String, defaults: true }));
const { ServerReflection } = load(reflectionProto).grpc.reflection.v1alpha;
const { Health } = load(healthProto).grpc.health.v1;

let cluster;
let addresses;  // service name → address, "metrics router" → its /metrics address

before(() => {
  const started = startCluster(indexcache, ['--model', model, '--threads', '1', '--metrics-port-base', '0']);
  cluster = started.child;
  addresses = started.addresses;
  return started.ready;
});
after(() => cluster?.kill('SIGTERM'));

// One request on a reflection stream; resolves with the response.
function reflect(address, request) {
  const client = new ServerReflection(address, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    const call = client.ServerReflectionInfo();
    call.on('data', (response) => {
      resolve(response);
      call.end();
    });
    call.on('error', reject);
    call.write(request);
  }).finally(() => client.close());
}

// By the names `cluster up` prints: "internal" is the router's internal port, the workers' Registry,
// which its public port does not serve.
const expectedServices = {
  router: ['indexcache.v1.IndexCache'],
  internal: ['indexcache.v1.Registry'],
  'prefill-0': ['indexcache.v1.PrefillWorker'],
  'decode-0': ['indexcache.v1.DecodeWorker', 'indexcache.v1.KvHandoff'],
};

test('reflection lists every service of every process', async () => {
  for (const [service, names] of Object.entries(expectedServices)) {
    const response = await reflect(addresses[service], { list_services: '' });
    const listed = response.list_services_response.service.map((s) => s.name).sort();
    assert.deepEqual(listed, [...names, 'grpc.health.v1.Health', 'grpc.reflection.v1alpha.ServerReflection'].sort(),
      service);
  }
});

test("the router's API called through reflected descriptors alone", async () => {
  const response = await reflect(addresses.router, { file_containing_symbol: 'indexcache.v1.IndexCache' });
  const files = response.file_descriptor_response.file_descriptor_proto;
  // A FileDescriptorSet is `repeated FileDescriptorProto file = 1`: each file as a length-delimited field 1.
  const set = Buffer.concat(files.flatMap((file) => [Buffer.from([0x0a]), varint(file.length), file]));
  const { IndexCache } = grpc.loadPackageDefinition(protoLoader.loadFileDescriptorSetFromBuffer(set, { keepCase: true })).indexcache.v1;
  const client = new IndexCache(addresses.router, grpc.credentials.createInsecure());
  const info = await new Promise((resolve, reject) => client.ModelInfo({}, (e, r) => (e ? reject(e) : resolve(r))));
  client.close();
  assert.equal(info.architecture, 'GlmMoeDsaForCausalLM');
  assert.equal(info.vocab_size, 2048);
});

function varint(n) {
  const bytes = [];
  while (n > 0x7f) {
    bytes.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  bytes.push(n);
  return Buffer.from(bytes);
}

function check(address, service) {
  const client = new Health(address, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => client.Check({ service }, (e, r) => (e ? reject(e) : resolve(r.status))))
    .finally(() => client.close());
}

test('grpc.health.v1 answers for the server and for each service name', async () => {
  for (const [service, names] of Object.entries(expectedServices)) {
    for (const name of ['', ...names]) assert.equal(await check(addresses[service], name), 'SERVING', `${service} ${name}`);
    await assert.rejects(check(addresses[service], 'indexcache.v1.NoSuchService'), (e) => e.code === grpc.status.NOT_FOUND);
  }
});

test('--version and indexcache_build_info name the commit the binaries were built from', async () => {
  const head = execFileSync('git', ['-C', sourceDir, 'rev-parse', '--short=12', 'HEAD']).toString().trim();
  // A tree edited since the build may have been clean or not when built; a clean one was clean.
  const dirty = execFileSync('git', ['-C', sourceDir, 'status', '--porcelain', '--untracked-files=no']).toString() !== '';
  const commit = dirty ? `${head}(-dirty)?` : head;
  for (const [args, program] of [[['--version'], 'indexcache'], [['router', '--version'], 'indexcache-router'],
    [['prefill-worker', '--version'], 'indexcache-prefill-worker'], [['decode-worker', '--version'], 'indexcache-decode-worker']]) {
    const line = execFileSync(indexcache, args).toString().trim();
    assert.match(line, new RegExp(`^${program} \\d+\\.\\d+\\.\\d+ \\(commit ${commit}, backends cpu(,cuda)?\\)$`));
  }
  const version = execFileSync(indexcache, ['--version']).toString().split(' ')[1];
  const metrics = await (await fetch(`http://${addresses['metrics router']}/metrics`)).text();
  const line = metrics.split('\n').find((l) => l.startsWith('indexcache_build_info{'));
  assert.ok(line, 'the router exports indexcache_build_info');
  assert.match(line, new RegExp(`version="${version}"`));
  assert.match(line, new RegExp(`commit="${commit}"`));
  assert.match(line, / 1$/);
  for (const worker of ['prefill-0', 'decode-0']) {
    const text = await (await fetch(`http://${addresses[`metrics ${worker}`]}/metrics`)).text();
    assert.match(text, new RegExp(`^indexcache_build_info\\{.*commit="${commit}".*\\} 1$`, 'm'), worker);
  }
});
