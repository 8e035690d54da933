// A real third-party SSE client (the `eventsource` package, WHATWG EventSource) reading one
// chat stream, its connection cut after DROP_AFTER events: it reconnects by itself, with
// the Last-Event-ID header, as browsers do. Prints every event it got as JSON lines, then
// one line {"reconnects": n}.
//
//   node eventsource-client.mjs URL TOKEN DROP_AFTER
import { EventSource } from "eventsource";

const [url, token, dropAfterText] = process.argv.slice(2);
const dropAfter = Number(dropAfterText);
let connections = 0;

function cutAfter(response, events) {
  // Pass the body through, and fail it once `events` events have gone by: the network
  // dropped the connection mid-reply.
  let seen = 0;
  const reader = response.body.getReader();
  const body = new ReadableStream({
    async pull(controller) {
      const { value, done } = await reader.read();
      if (done) return controller.close();
      const text = new TextDecoder().decode(value);
      seen += text.split("\n\n").length - 1;
      controller.enqueue(value);
      if (seen >= events) {
        reader.cancel();
        controller.error(new Error("connection dropped"));
      }
    },
  });
  return new Response(body, { status: response.status, headers: response.headers });
}

const source = new EventSource(url, {
  fetch: async (input, init) => {
    connections += 1;
    const headers = { ...(init.headers || {}), Authorization: `Bearer ${token}` };
    const response = await fetch(input, { ...init, headers });
    return connections === 1 ? cutAfter(response, dropAfter) : response;
  },
});

let timer;
const done = new Promise((resolve, reject) => {
  for (const name of ["start", "thinking", "content", "done", "error"]) {
    source.addEventListener(name, (event) => {
      if (name === "error" && !event.data) return; // a connection error, not our event
      console.log(JSON.stringify({ name, id: event.lastEventId, data: JSON.parse(event.data) }));
      if (name === "done" || name === "error") resolve();
    });
  }
  timer = setTimeout(() => reject(new Error("no end within 30 s")), 30_000);
});

try {
  await done;
} finally {
  clearTimeout(timer);
  source.close();
}
console.log(JSON.stringify({ reconnects: connections - 1 }));
