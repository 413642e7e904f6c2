// One call with the official Node SDK at its default settings (two retries, obeying x-should-retry
// and Retry-After), for tests/e2e/test_retry_headers.py. Prints one JSON line: how long the call
// took, and the status and retry headers of the error it raised.
//
//   node call.mjs <base URL> <API key> chat|stream|image
import OpenAI from "openai";

const [baseURL, apiKey, kind] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey });
const started = performance.now();
let outcome;
try {
  if (kind === "image") {
    await client.images.generate({ prompt: "a fox" });
  } else {
    const body = { model: "qwen3.7-plus", messages: [{ role: "user", content: "hi" }], stream: kind === "stream" };
    const answer = await client.chat.completions.create(body);
    if (body.stream) for await (const chunk of answer) void chunk;
  }
  outcome = { raised: false };
} catch (error) {
  outcome = {
    raised: true,
    name: error.constructor.name,
    status: error.status ?? null,
    code: error.code ?? null,
    retryAfter: error.headers?.get("retry-after") ?? null,
    shouldRetry: error.headers?.get("x-should-retry") ?? null,
  };
}
console.log(JSON.stringify({ ...outcome, elapsed: (performance.now() - started) / 1000 }));
