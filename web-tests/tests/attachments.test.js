// Files and images in a 1:1 chat: Alice attaches a PNG and a text file
// through the paperclip button, with upload progress in her composer; Bob
// sees the image inline (loaded, at its real size) and a file chip whose link
// downloads the very same bytes, also after a reload; a text file disguised
// as a PNG is refused with the server's reason and sends nothing.

import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { deflateSync } from "node:zlib";
import { eventually, withChat } from "../lib/browser.js";

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, "latin1");
  data.copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

/** A real PNG (8-bit RGBA) of `width` × `height`, coloured by `pixel(x, y)`. */
function png(width, height, pixel) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 6, 0, 0, 0], 8); // bit depth 8, RGBA, deflate, no filter, no interlace
  const raw = Buffer.alloc(height * (1 + width * 4));
  for (let y = 0; y < height; y++) {
    const row = y * (1 + width * 4); // each row starts with filter type 0
    for (let x = 0; x < width; x++) raw.set(pixel(x, y), row + 1 + x * 4);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

/** Picks `file` ({name, mimeType, buffer}) through the paperclip button. */
async function attach(user, file) {
  const [chooser] = await Promise.all([
    user.page.waitForEvent("filechooser"),
    user.page.click('[data-testid="attach"]'),
  ]);
  await chooser.setFiles(file);
}

/** Records every state the upload bar goes through, in `window.uploadStates`. */
async function watchUploads(page) {
  await page.evaluate(() => {
    window.uploadStates = [];
    const bar = document.querySelector('[data-testid="upload-progress"]');
    const note = () =>
      window.uploadStates.push({
        shown: !bar.hidden,
        phase: bar.dataset.phase || "",
        percent: Number(bar.dataset.percent || 0),
        sendDisabled: document.getElementById("send-btn").disabled,
        attachDisabled: document.querySelector('[data-testid="attach"]').disabled,
      });
    new MutationObserver(note).observe(bar, { attributes: true });
  });
}

/** Fetches `href` in the page (as a click would) and answers what came back. */
function download(page, href) {
  return page.evaluate(async (url) => {
    const res = await fetch(url);
    const bytes = new Uint8Array(await res.arrayBuffer());
    let bin = "";
    for (const b of bytes) bin += String.fromCharCode(b);
    return {
      status: res.status,
      type: res.headers.get("content-type"),
      disposition: res.headers.get("content-disposition"),
      base64: btoa(bin),
    };
  }, href);
}

/** The attachments the open conversation shows, in order. */
function shownAttachments(page) {
  return page.$$eval("#messages .msg", (els) =>
    els.map((el) => {
      const img = el.querySelector(".attachment-image");
      const file = el.querySelector(".attachment-file");
      return {
        kind: img ? "image" : file ? "file" : "text",
        name: img ? img.alt : file ? file.querySelector(".file-name").textContent : null,
        caption: el.querySelector(".caption")?.textContent ?? null,
      };
    }),
  );
}

test("files and images are sent as attachments", { timeout: 240000 }, (t) =>
  withChat(t, "attachments", {}, async ({ server, open }) => {
    const alice = await open("alice");
    await alice.register();
    const bob = await open("bob");
    await bob.register();

    await alice.startChat("bob");
    await alice.send("Sending you two files");
    await alice.expectMessages(["Sending you two files"]);
    await eventually(async () => (await bob.conversations()).map((c) => c.name), ["alice"]);
    await bob.open("alice");
    await bob.expectMessages(["Sending you two files"]);

    // Every upload of Alice's: no Authorization header (the address is
    // signed), and the declared type as Content-Type.
    const puts = [];
    alice.page.on("request", async (req) => {
      if (req.method() !== "PUT") return;
      const headers = await req.allHeaders();
      puts.push({ url: req.url(), authorization: headers.authorization ?? null, type: headers["content-type"] ?? null });
    });
    await watchUploads(alice.page);

    // An image larger than the preview (240 px at most), with a caption
    // typed first.
    const image = png(320, 200, (x, y) => [(x * 4) & 255, y, 255 - ((x + y) >> 2), 255]);
    await alice.page.fill("#composer-input", "The new logo");
    await attach(alice, { name: "logo.png", mimeType: "image/png", buffer: image });

    const bobImage = bob.page.locator("#messages .attachment-image");
    await bobImage.waitFor();
    await eventually(
      () => bobImage.evaluate((img) => ({ complete: img.complete, width: img.naturalWidth, height: img.naturalHeight })),
      { complete: true, width: 320, height: 200 },
      { message: "the image Bob sees" },
    );
    const box = await bobImage.boundingBox();
    assert.deepEqual([box.width, box.height], [240, 150], "the preview is scaled down to 240 px");
    assert.equal(await bobImage.getAttribute("alt"), "logo.png");
    // It opens in a new tab, at the address it was loaded from.
    const imageLink = bob.page.locator("#messages a.attachment-image-link");
    assert.equal(await imageLink.getAttribute("target"), "_blank");
    assert.equal(await imageLink.evaluate((a) => a.href), await bobImage.evaluate((img) => img.src));
    const shown = await download(bob.page, await bobImage.evaluate((img) => img.src));
    assert.equal(shown.status, 200);
    assert.ok(Buffer.from(shown.base64, "base64").equals(image), "the image Bob loads is the one Alice sent");

    // The caption shows under the image, on both sides; the composer is
    // empty again, and the list names what came.
    const afterImage = [
      { kind: "text", name: null, caption: null },
      { kind: "image", name: "logo.png", caption: "The new logo" },
    ];
    await eventually(() => shownAttachments(bob.page), afterImage);
    await eventually(() => shownAttachments(alice.page), afterImage);
    await eventually(async () => (await alice.messages()).map((m) => m.state), ["stored", "stored"]);
    assert.equal(await alice.page.inputValue("#composer-input"), "");
    await eventually(() => bob.conversations(), [{ name: "alice", unread: 0, preview: "Photo · The new logo" }]);
    await eventually(
      () => alice.page.locator("#messages .attachment-image").evaluate((img) => img.complete && img.naturalWidth),
      320,
      { message: "Alice's own copy of the image" },
    );

    // Alice saw the upload bar: the bytes went up (100 %), sending was off
    // meanwhile, and the bar went away again.
    const states = await alice.page.evaluate(() => window.uploadStates);
    assert.ok(states.some((s) => s.shown && s.phase === "upload" && s.percent === 100), JSON.stringify(states));
    assert.ok(states.filter((s) => s.shown).every((s) => s.sendDisabled && s.attachDisabled), JSON.stringify(states));
    assert.equal(await alice.page.locator('[data-testid="upload-progress"]').isHidden(), true);
    assert.equal(puts.length, 1);
    assert.deepEqual([puts[0].authorization, puts[0].type], [null, "image/png"]);

    // A text file, this time over a slow uplink, so the bar shows progress
    // on the way (and sending stays off) before it reaches 100 %.
    const lines = [];
    for (let i = 1; lines.join("").length < 96 * 1024; i++) lines.push(`Line ${i}: notes about the new logo, ça va ?\n`);
    const notes = Buffer.from(lines.join(""), "utf8");
    const cdp = await alice.context.newCDPSession(alice.page);
    await cdp.send("Network.enable");
    await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: 48 * 1024 });
    await alice.page.evaluate(() => (window.uploadStates = []));
    await attach(alice, { name: "notes.txt", mimeType: "text/plain", buffer: notes });
    await alice.page.locator('[data-testid="upload-progress"][data-phase="upload"]').waitFor();
    // While it uploads, Enter in the composer sends nothing.
    await alice.page.press("#composer-input", "Enter");
    await alice.page.waitForFunction(() => Number(document.querySelector('[data-testid="upload-progress"]').dataset.percent) >= 25);
    await alice.screenshot("attachment-upload");

    const chip = bob.page.locator("#messages .attachment-file", { hasText: "notes.txt" });
    await chip.locator("a.attachment-download").waitFor();
    await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
    const slow = await alice.page.evaluate(() => window.uploadStates);
    const percents = slow.filter((s) => s.shown && s.phase === "upload").map((s) => s.percent);
    assert.ok(percents.some((p) => p > 0 && p < 100), `progress on the way: ${JSON.stringify(percents)}`);
    assert.ok(percents.includes(100), `progress at the end: ${JSON.stringify(percents)}`);
    assert.ok(slow.filter((s) => s.shown).every((s) => s.sendDisabled && s.attachDisabled), JSON.stringify(slow));

    assert.equal(await chip.locator(".file-size").textContent(), `${Math.round(notes.length / 1024)} KB · TXT`);
    const link = chip.locator("a.attachment-download");
    assert.equal(await link.getAttribute("download"), "notes.txt");
    const got = await download(bob.page, await link.evaluate((a) => a.href));
    assert.equal(got.status, 200);
    assert.match(got.type, /^text\/plain/);
    assert.match(got.disposition ?? "", /notes\.txt/, "the download names the file");
    assert.ok(Buffer.from(got.base64, "base64").equals(notes), "the downloaded bytes are the file's");
    const afterNotes = [...afterImage, { kind: "file", name: "notes.txt", caption: null }];
    await eventually(() => shownAttachments(bob.page), afterNotes);
    await eventually(() => shownAttachments(alice.page), afterNotes);
    await eventually(() => bob.conversations(), [{ name: "alice", unread: 0, preview: "File: notes.txt" }]);
    assert.equal(puts.length, 2);
    assert.deepEqual([puts[1].authorization, puts[1].type], [null, "text/plain"]);
    await bob.screenshot("attachments");

    // A reload shows both again from history, with fresh addresses.
    await bob.page.reload();
    await bob.waitOnline();
    await bob.waitChatTitle("alice");
    await eventually(() => shownAttachments(bob.page), afterNotes);
    await eventually(
      () => bob.page.locator("#messages .attachment-image").evaluate((img) => [img.complete, img.naturalWidth, img.naturalHeight]),
      [true, 320, 200],
    );
    const again = await download(bob.page, await bob.page.locator("#messages a.attachment-download").evaluate((a) => a.href));
    assert.ok(Buffer.from(again.base64, "base64").equals(notes));

    // What the server says about a text file declared as a PNG, asked
    // directly. The contract has `complete` refuse it; a server that carries
    // the bytes itself may check them as they arrive and refuse the PUT.
    const fake = Buffer.from("Not a picture at all, just text pretending.\n", "utf8");
    const token = await alice.token();
    const conversationId = `dm:${Math.min(await alice.userId(), await bob.userId())}:${Math.max(await alice.userId(), await bob.userId())}`;
    const declared = await server.api("POST", "/api/attachments", { conversation_id: conversationId, name: "evil.png", size: fake.length, content_type: "image/png" }, token);
    const put = await fetch(new URL(declared.upload_url, server.url), { method: "PUT", headers: { "content-type": "image/png" }, body: fake });
    let refused = put;
    if (put.ok) {
      refused = await fetch(`${server.url}/api/attachments/${encodeURIComponent(declared.attachment_id)}/complete`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}` },
      });
    }
    t.diagnostic(`a disguised file is refused by ${put.ok ? "POST …/complete" : "the PUT of its bytes"}`);
    assert.equal(refused.status, 415);
    const refusal = await refused.json();
    const reason = refusal.error ?? refusal;
    assert.equal(reason.code, "unsupported_type");

    // The same file through the app: the server's reason shows in Alice's
    // composer, her caption stays, and nothing is sent.
    const messagesBefore = await alice.messages();
    await alice.page.evaluate(() => (window.uploadStates = []));
    await alice.page.fill("#composer-input", "Look at this");
    await attach(alice, { name: "evil.png", mimeType: "image/png", buffer: fake });
    const error = alice.page.locator('[data-testid="attach-error"]');
    await error.waitFor();
    const shownError = await error.textContent();
    assert.ok(shownError.startsWith("“evil.png” was not sent: "), shownError);
    assert.ok(shownError.toLowerCase().includes(reason.message.toLowerCase().replace(/\.$/, "")), `${shownError} / ${reason.message}`);
    assert.equal(await alice.page.inputValue("#composer-input"), "Look at this");
    assert.equal(await alice.page.locator('[data-testid="upload-progress"]').isHidden(), true);
    assert.equal(await alice.page.isDisabled("#send-btn"), false);
    await alice.screenshot("attachment-refused");
    await sleep(500);
    assert.deepEqual(await alice.messages(), messagesBefore);
    assert.equal(await alice.page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith("tern.outbox.")).length), 0);
    const history = await server.api("GET", `/api/conversations/${encodeURIComponent(conversationId)}/messages?after_seq=0&limit=100`, undefined, token);
    assert.equal(history.messages.length, 3);
    assert.equal((await bob.messages()).length, 3);
    // What was stored is the server's full description of each attachment.
    const stored = history.messages.map((m) => m.content.attachment ?? null);
    const described = (a) => a && { name: a.name, size: a.size, type: a.content_type.split(";")[0], width: a.width ?? null, height: a.height ?? null };
    assert.deepEqual(stored.map(described), [
      null,
      { name: "logo.png", size: image.length, type: "image/png", width: 320, height: 200 },
      { name: "notes.txt", size: notes.length, type: "text/plain", width: null, height: null },
    ]);
    assert.deepEqual(history.messages.map((m) => m.content.text), ["Sending you two files", "The new logo", ""]);

    // The error goes away with the next message, which is sent as usual.
    await alice.send("Never mind");
    await eventually(() => error.isHidden(), true);
    await eventually(async () => (await bob.messages()).map((m) => [m.seq, m.state]), [[1, "stored"], [2, "stored"], [3, "stored"], [4, "stored"]]);
    assert.equal((await bob.messages())[3].text, "Never mind");
  }));
