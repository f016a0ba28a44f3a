// Drives Tern's web app in Debian's Chromium through playwright-core. Every
// user gets a browser context of their own (own storage, own socket), as if
// on their own device; `openTab` adds another tab to it.

import assert from "node:assert/strict";
import { mkdir, readdir, rm } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { chromium } from "playwright-core";
import { TernServer } from "./server.js";

export const screenshotDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "screenshots");

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

/**
 * Debian's Chromium, headless. Playwright's own browser download is not
 * used; `launch` gives every run a fresh temporary profile directory.
 */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.TERN_TEST_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--no-first-run",
      "--disable-sync",
    ],
  });
}

/**
 * Polls `read` until it deep-equals `expected` (a `read` that throws counts
 * as "not yet"), then fails with a readable diff once `timeout` has passed.
 */
export async function eventually(read, expected, { timeout = 15000, message } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    let failure;
    try {
      const actual = await read();
      assert.deepStrictEqual(actual, expected);
      return actual;
    } catch (err) {
      failure = err;
    }
    if (Date.now() > deadline) {
      if (message) failure.message = `${message}\n${failure.message}`;
      throw failure;
    }
    await sleep(100);
  }
}

/** One person using the app in their own browser context. */
export class ChatUser {
  static async open(browser, server, username, { viewport = DESKTOP, mobile = false } = {}) {
    const context = await browser.newContext({
      baseURL: server.url,
      viewport,
      deviceScaleFactor: mobile ? 2 : 1,
      isMobile: mobile,
      hasTouch: mobile,
      colorScheme: "light",
      timezoneId: "UTC",
      locale: "en-GB",
    });
    const page = await openPage(context);
    const user = new ChatUser();
    Object.assign(user, { browser, server, username, context, page, mobile, password: "password1" });
    return user;
  }

  /**
   * Another tab of this user's browser: same context, so the same
   * localStorage (the login) but its own sessionStorage. It drives its own
   * page; `close` still closes the whole context.
   */
  async openTab() {
    const tab = new ChatUser();
    Object.assign(tab, this, { page: await openPage(this.context) });
    return tab;
  }

  async register() {
    const { page } = this;
    await page.click("#tab-register");
    await page.fill("#username", this.username);
    await page.fill("#password", this.password);
    await page.press("#password", "Enter");
    await this.waitOnline();
  }

  async login() {
    const { page } = this;
    await page.click("#tab-login");
    await page.fill("#username", this.username);
    await page.fill("#password", this.password);
    await page.click("#login-submit");
    await this.waitOnline();
  }

  async waitOnline() {
    await this.page.waitForSelector('#conn[data-state="online"]');
  }

  async connState() {
    return this.page.getAttribute("#conn", "data-state");
  }

  /** Opens the "New chat" dialog and starts a 1:1 chat with `username`. */
  async startChat(username) {
    const { page } = this;
    await page.click("#new-chat-btn");
    await page.fill("#chat-username", username);
    await page.press("#chat-username", "Enter");
    await page.waitForSelector("#chat-dialog", { state: "hidden" });
    await this.waitChatTitle(username);
  }

  async waitChatTitle(name) {
    await this.page.locator("#chat-name", { hasText: name }).waitFor();
  }

  /** Clicks a conversation in the list by its shown name. */
  async open(name) {
    await this.convItem(name).click();
    await this.waitChatTitle(name);
  }

  convItem(name) {
    return this.page.locator(".conv").filter({ has: this.page.locator(".conv-name", { hasText: new RegExp(`^${escapeRe(name)}$`) }) });
  }

  /** The conversation list as `[{name, unread, preview}]`, top first. */
  async conversations() {
    return this.page.$$eval(".conv", (els) =>
      els.map((el) => ({
        name: el.querySelector(".conv-name").textContent,
        unread: Number(el.querySelector(".badge")?.dataset.unread || 0),
        preview: el.querySelector(".conv-preview").textContent,
      })),
    );
  }

  async unread(name) {
    const list = await this.conversations();
    const item = list.find((c) => c.name === name);
    assert.ok(item, `${this.username} has no conversation named ${name}: ${JSON.stringify(list)}`);
    return item.unread;
  }

  /** Types into the composer and presses Enter. */
  async send(text) {
    await this.page.fill("#composer-input", text);
    await this.page.press("#composer-input", "Enter");
  }

  /** The open conversation as `[{seq, own, text, state}]` in display order. */
  async messages() {
    return this.page.$$eval("#messages .msg", (els) =>
      els.map((el) => ({
        seq: el.dataset.seq ? Number(el.dataset.seq) : null,
        own: el.classList.contains("own"),
        text: el.querySelector(".bubble").textContent,
        state: el.classList.contains("failed") ? "failed" : el.classList.contains("pending") ? "pending" : "stored",
      })),
    );
  }

  /** For each of one's own stored messages, how many others have read it. */
  async readBy() {
    return this.page.$$eval("#messages .msg.own[data-read-by]", (els) => els.map((el) => Number(el.dataset.readBy)));
  }

  /** The receipt under the last of one's own messages ("✓ Sent", "✓✓ Read", …). */
  async receipt() {
    const all = await this.page.$$eval("#messages .msg.own .receipt", (els) => els.map((el) => el.textContent));
    return all.at(-1) ?? null;
  }

  async texts() {
    return (await this.messages()).map((m) => m.text);
  }

  /** Waits until the open conversation shows exactly `texts`, all stored, seq 1..n. */
  async expectMessages(texts, { firstSeq = 1 } = {}) {
    const expected = texts.map((text, i) => ({ seq: firstSeq + i, text, state: "stored" }));
    await eventually(
      async () => (await this.messages()).map(({ seq, text, state }) => ({ seq, text, state })),
      expected,
      { message: `${this.username}'s open conversation` },
    );
  }

  async screenshot(name) {
    await mkdir(screenshotDir, { recursive: true });
    // Toasts fade out on their own; keep them out of the pictures.
    await this.page.evaluate(() => document.querySelectorAll(".toast").forEach((t) => t.remove()));
    // A hover highlight left by the last click would look like a selection.
    if (!this.mobile) await this.page.mouse.move(1, 1);
    await this.page.screenshot({ path: path.join(screenshotDir, `${name}.png`) });
  }

  /** The access token the page holds, for API calls on this user's behalf. */
  async token() {
    return this.page.evaluate(() => JSON.parse(localStorage.getItem("tern.session")).token);
  }

  async userId() {
    return this.page.evaluate(() => JSON.parse(localStorage.getItem("tern.session")).user_id);
  }

  /** The device id this tab connects as (its delivery cursors are its own). */
  async device() {
    return this.page.evaluate(() => sessionStorage.getItem("tern.device"));
  }

  async close() {
    await this.context.close().catch(() => {});
  }
}

async function openPage(context) {
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  await page.goto("/");
  return page;
}

function escapeRe(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/**
 * Runs a scenario with a server and a browser, closing both afterwards. On
 * failure it saves a screenshot of every open page and prints the server log.
 */
export async function withChat(t, name, env, fn) {
  // Failure pictures of an earlier run would only mislead.
  await mkdir(screenshotDir, { recursive: true });
  for (const file of await readdir(screenshotDir)) {
    if (file.startsWith(`FAILED-${name}-`)) await rm(path.join(screenshotDir, file), { force: true });
  }
  const server = await TernServer.start(env);
  const browser = await launchBrowser();
  const users = [];
  const open = async (username, options) => {
    const user = await ChatUser.open(browser, server, username, options);
    users.push(user);
    return user;
  };
  try {
    await fn({ server, browser, open });
  } catch (err) {
    await mkdir(screenshotDir, { recursive: true });
    for (const [i, u] of users.entries()) {
      // Every tab of the user's browser, the first one named as before.
      for (const [j, page] of u.context.pages().entries()) {
        const tab = j ? `-tab${j + 1}` : "";
        await page
          .screenshot({ path: path.join(screenshotDir, `FAILED-${name}-${i}-${u.username}${tab}.png`) })
          .catch(() => {});
      }
    }
    console.error(`--- ${name}: server log ---\n${server.log || "(empty)"}\n--- end of server log ---`);
    throw err;
  } finally {
    await browser.close().catch(() => {});
    await server.close();
  }
}
