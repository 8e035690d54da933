// OpenAI's own Node SDK (`openai` from npm) streaming one chat completion from the
// service, read with `for await` as its README shows. Prints one JSON line: the text the
// deltas joined to, how many chunks came, and the usage of the last one.
//
//   node openai-client.mjs BASE_URL TOKEN MODEL MESSAGE
import OpenAI from "openai";

const [baseURL, apiKey, model, message] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const stream = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: message }],
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let chunks = 0;
let usage = null;
for await (const chunk of stream) {
  chunks += 1;
  text += chunk.choices[0]?.delta?.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
console.log(JSON.stringify({ text, chunks, usage }));
