// Opens an unsubscribe page in headless Chromium, as a person would on a
// phone: checks it renders, presses the button, waits for the confirmation,
// and saves a screenshot of each step.
//
//   node unsubscribe.mjs URL SCREENSHOT_DIR
import { chromium } from "playwright-core";

const [url, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2 });
  const blocked = [];
  page.on("request", (r) => { if (!r.url().startsWith(new URL(url).origin)) blocked.push(r.url()); });
  await page.goto(url);
  const heading = await page.getByRole("heading").innerText();
  if (!/Unsubscribe/.test(heading)) throw new Error(`unexpected heading: ${heading}`);
  await page.screenshot({ path: `${shots}/unsubscribe-page.png` });
  await page.getByRole("button", { name: "Unsubscribe" }).click();
  await page.getByRole("status").waitFor();
  const done = await page.getByRole("status").innerText();
  if (done !== "You are unsubscribed") throw new Error(`unexpected confirmation: ${done}`);
  await page.screenshot({ path: `${shots}/unsubscribed.png` });
  if (blocked.length) throw new Error(`the page loaded external assets: ${blocked}`);
  console.log("ok");
} finally {
  await browser.close();
}
