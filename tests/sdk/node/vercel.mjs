// Checks the gateway with the Vercel AI SDK's default OpenAI provider, which speaks the
// Responses API. Run by tests/sdk.rs against a live gateway; reads SWITCHYARD_BASE_URL,
// SWITCHYARD_KEY.
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, streamText } from 'ai';

const openai = createOpenAI({
  baseURL: process.env.SWITCHYARD_BASE_URL,
  apiKey: process.env.SWITCHYARD_KEY,
});
const model = openai('gpt-4o-mini');
let passed = 0;

function check(name, condition, detail = '') {
  if (!condition) {
    console.error(`FAILED: ${name} ${detail}`);
    process.exit(1);
  }
  passed += 1;
}

const words = (text) => text.split(' ').length;

const plain = await generateText({ model, prompt: 'Describe a switchyard.', maxRetries: 0 });
check('generateText has text', plain.text.length > 0, JSON.stringify(plain.response));
check('generateText usage', plain.usage.outputTokens === words(plain.text), JSON.stringify(plain.usage));
check('generateText finish reason', plain.finishReason === 'stop', plain.finishReason);

const withSystem = await generateText({
  model,
  system: 'Be brief.',
  prompt: 'Describe a switchyard.',
  maxOutputTokens: 3,
  maxRetries: 0,
});
check('a system prompt and a token limit', withSystem.usage.outputTokens === 3, JSON.stringify(withSystem.usage));
check('cut by the limit', withSystem.finishReason === 'length', withSystem.finishReason);

const streamed = streamText({ model, prompt: 'Describe a switchyard.', maxRetries: 0, onError: ({ error }) => check('streamText without error', false, String(error)) });
let text = '';
for await (const part of streamed.textStream) text += part;
check('streamText text equals generateText', text === plain.text, `${text} != ${plain.text}`);
const usage = await streamed.usage;
check('streamText usage', usage.outputTokens === words(text), JSON.stringify(usage));

console.log(`node ai-sdk: ${passed} passed, 0 failed`);
