// The openai Node SDK through the proxy: `node openai.mjs <scenario> [args]` prints one JSON
// line of what the SDK gave back (see tests/test_node_sdks.py).
import OpenAI, { APIError, toFile } from 'openai';

import { TIMEOUT, caught, headers, proxy, run } from './common.mjs';

// No retries of its own, unless a scenario is about them: each request is seen once.
const client = (options = { maxRetries: 0 }) =>
  new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: proxy.key, timeout: TIMEOUT, ...options });
const ask = () => ({ model: proxy.openaiModel, messages: [{ role: 'user', content: 'hi' }] });
const weather = {
  type: 'function',
  function: {
    name: 'get_weather',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};

await run({
  async chat() {
    const { data, response, request_id } = await client()
      .chat.completions.create(ask())
      .withResponse();
    return {
      content: data.choices[0].message.content,
      _request_id: data._request_id,
      request_id,
      headers: headers(response),
    };
  },

  async stream() {
    const stream = await client().chat.completions.create({ ...ask(), stream: true });
    const deltas = [];
    let finishReason = null;
    for await (const chunk of stream) {
      for (const choice of chunk.choices) {
        if (choice.delta.content) deltas.push(choice.delta.content);
        finishReason = choice.finish_reason ?? finishReason;
      }
    }
    return { deltas, finish_reason: finishReason };
  },

  async tools() {
    const completion = await client().chat.completions.create({ ...ask(), tools: [weather] });
    const [choice] = completion.choices;
    return {
      finish_reason: choice.finish_reason,
      tool_calls: choice.message.tool_calls.map((call) => ({
        id: call.id,
        name: call.function.name,
        arguments: JSON.parse(call.function.arguments),
      })),
    };
  },

  async error(model) {
    return caught(client().chat.completions.create({ ...ask(), model }), APIError);
  },

  async responses() {
    const { data, request_id } = await client()
      .responses.create({ model: proxy.openaiModel, input: 'hi' })
      .withResponse();
    return { id: data.id, object: data.object, output_text: data.output_text, request_id };
  },

  // Create a file on the provider `pin` names, then retrieve it by its id alone.
  async files(pin) {
    const openai = client();
    const file = await toFile(Buffer.from('{"custom_id": "1"}\n'), 'in.jsonl');
    const created = await openai.files.create(
      { file, purpose: 'batch' },
      { headers: { 'x-llm-proxy-provider': pin } },
    );
    const retrieved = await openai.files.retrieve(created.id);
    return { created: created.id, retrieved: { id: retrieved.id, filename: retrieved.filename } };
  },

  // The SDK as users construct it: its default retries.
  async defaultRetries() {
    const openai = client({});
    const error = await caught(openai.chat.completions.create(ask()), APIError);
    return { max_retries: openai.maxRetries, ...error };
  },
});
