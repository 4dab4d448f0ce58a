// The media bench's peer: the plainest HTTP file upload a Node developer would write. PUT /f
// streams the request body to a file (fsynced before the answer, as postbox's file store does),
// GET /f streams it back. Prints "plain listening on PORT". Arg: DIR.
import { createReadStream, createWriteStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';

const dir = process.argv[2];
const file = join(dir, 'plain-upload.bin');
const server = createServer(async (req, res) => {
  try {
    if (req.method === 'PUT') {
      await pipeline(req, createWriteStream(file));
      const fh = await open(file, 'r');
      await fh.sync();
      await fh.close();
      res.writeHead(204).end();
    } else {
      res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
      await pipeline(createReadStream(file, { highWaterMark: 256 * 1024 }), res);
    }
  } catch {
    res.destroy();
  }
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`plain listening on ${server.address().port}\n`));
