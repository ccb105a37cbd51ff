// Checks the gateway with the official `openai` Node package.
// Run by tests/sdk.rs against a live gateway; reads SWITCHYARD_BASE_URL, SWITCHYARD_KEY.
import OpenAI from 'openai';

const client = new OpenAI({
  baseURL: process.env.SWITCHYARD_BASE_URL,
  apiKey: process.env.SWITCHYARD_KEY,
  maxRetries: 0,
  timeout: 30_000,
});
const messages = [{ role: 'user', content: 'Describe a switchyard.' }];
let passed = 0;

function check(name, condition, detail = '') {
  if (!condition) {
    console.error(`FAILED: ${name} ${detail}`);
    process.exit(1);
  }
  passed += 1;
}

const reply = await client.chat.completions.create({ model: 'gpt-4o-mini', messages });
const text = reply.choices[0].message.content;
check('plain chat has content', text.length > 0, JSON.stringify(reply));
check('plain chat usage', reply.usage.completion_tokens === text.split(' ').length);

let streamed = '';
let usage = null;
const stream = await client.chat.completions.create({
  model: 'gpt-4o-mini',
  messages,
  stream: true,
  stream_options: { include_usage: true },
});
for await (const chunk of stream) {
  if (chunk.choices.length) streamed += chunk.choices[0].delta.content ?? '';
  if (chunk.usage) usage = chunk.usage;
}
check('stream text equals the plain answer', streamed === text, `${streamed} != ${text}`);
check('stream usage', usage?.completion_tokens === streamed.split(' ').length, JSON.stringify(usage));

// The Node SDK asks for base64 and decodes it unconditionally; the upstream here only
// sends floats, so this passes only if the gateway converts.
const emb = await client.embeddings.create({ model: 'text-embedding-3-small', input: 'switchyard' });
const vector = emb.data[0].embedding;
check('embedding decoded', Array.isArray(vector) && vector.length === 1536, typeof vector);
check('embedding values are finite', vector.every(Number.isFinite));
const norm = Math.sqrt(vector.reduce((s, x) => s + x * x, 0));
check('embedding is a unit vector', Math.abs(norm - 1) < 1e-3, String(norm));

const models = [];
for await (const m of client.models.list()) models.push(m.id);
check('models list', models.includes('text-embedding-3-small'), models.join(','));

try {
  await new OpenAI({ baseURL: process.env.SWITCHYARD_BASE_URL, apiKey: 'sy-wrong', maxRetries: 0 }).models.list();
  check('wrong key rejects', false);
} catch (e) {
  check('wrong key is AuthenticationError', e instanceof OpenAI.AuthenticationError && e.status === 401, String(e));
}

let got = '';
try {
  const broken = await client.chat.completions.create({ model: 'chat-broken', messages, stream: true });
  for await (const chunk of broken) got += chunk.choices[0]?.delta?.content ?? '';
  check('a broken stream throws', false, `ended quietly after ${got}`);
} catch (e) {
  check('a broken stream throws APIError', e instanceof OpenAI.APIError && String(e.message).includes('failed mid-stream'), String(e));
}

// The Responses API (what the Vercel AI SDK's default provider speaks), translated to
// chat completions for this upstream.
const resp = await client.responses.create({ model: 'gpt-4o-mini', input: 'Describe a switchyard.' });
check('responses: output_text', resp.output_text === text, `${resp.output_text} != ${text}`);
check('responses: usage', resp.usage.output_tokens === text.split(' ').length, JSON.stringify(resp.usage));
let deltas = '';
let completed = null;
const events = await client.responses.create({ model: 'gpt-4o-mini', input: 'Describe a switchyard.', stream: true });
for await (const event of events) {
  if (event.type === 'response.output_text.delta') deltas += event.delta;
  if (event.type === 'response.completed') completed = event.response;
}
check('responses stream: deltas', deltas === text, `${deltas} != ${text}`);
check('responses stream: completed with usage', completed?.usage?.output_tokens === text.split(' ').length, JSON.stringify(completed));

console.log(`node openai: ${passed} passed, 0 failed`);
