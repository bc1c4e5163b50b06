//! The storage seam: the few file operations the log and the snapshots need, in one directory.
//!
//! Lesson: durability is a claim about what survives a power cut, and that cannot be tested on a
//! real disk. So the log and the snapshots never touch `std::fs` directly; they write through
//! [`Storage`], whose real implementation ([`FsStorage`]) is a thin layer over `std::fs` and whose
//! test double (`crate::fault::FaultStorage`) keeps synced and unsynced bytes apart and can cut
//! the power at any operation.
//!
//! Invariant: a file's bytes are durable only after [`StorageFile::sync_data`] returned `Ok`, and
//! a file's *name* (create, rename, remove) only after [`Storage::sync_directory`] returned `Ok`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A directory of named files: everything the log and the snapshots do to the disk.
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// Creates (or empties) `name` and opens it for appending.
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file for appending at its end.
    fn open_append(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    /// Reads a whole file.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// The names of the files in the directory (no order promised).
    fn list(&self) -> io::Result<Vec<String>>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_directory(&self) -> io::Result<()>;
}

/// A file open for appending.
pub trait StorageFile: Send + std::fmt::Debug {
    /// Appends all of `bytes`. On an error a prefix of them may have been written.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes the file's bytes durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `length_bytes` (used to remove a partial write or a torn tail).
    fn truncate(&mut self, length_bytes: u64) -> io::Result<()>;
    /// The file's length as this handle knows it.
    fn length_bytes(&self) -> u64;
}

/// The real thing: files in a directory of the local file system.
#[derive(Debug, Clone)]
pub struct FsStorage {
    directory: PathBuf,
}

impl FsStorage {
    /// Uses `directory`, creating it if missing.
    pub fn open(directory: impl AsRef<Path>) -> io::Result<Self> {
        let directory = directory.as_ref().to_path_buf();
        fs::create_dir_all(&directory)?;
        Ok(Self { directory })
    }

    /// The directory this storage lives in.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    fn path(&self, name: &str) -> PathBuf {
        self.directory.join(name)
    }
}

impl Storage for FsStorage {
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(self.path(name))?;
        Ok(Box::new(FsFile {
            file,
            length_bytes: 0,
        }))
    }

    fn open_append(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new().append(true).open(self.path(name))?;
        let length_bytes = file.metadata()?.len();
        Ok(Box::new(FsFile { file, length_bytes }))
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(name))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.directory)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path(from), self.path(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.path(name))
    }

    fn sync_directory(&self) -> io::Result<()> {
        File::open(&self.directory)?.sync_all()
    }
}

/// One open file of [`FsStorage`]. Opened in append mode, so writes go to the end even after a
/// truncation.
#[derive(Debug)]
struct FsFile {
    file: File,
    length_bytes: u64,
}

impl StorageFile for FsFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let result = self.file.write_all(bytes);
        // A failed write may have written a prefix: ask the file system what is there.
        self.length_bytes = match result {
            Ok(()) => self.length_bytes + bytes.len() as u64,
            Err(_) => self.file.metadata()?.len(),
        };
        result
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn truncate(&mut self, length_bytes: u64) -> io::Result<()> {
        self.file.set_len(length_bytes)?;
        self.length_bytes = length_bytes;
        Ok(())
    }

    fn length_bytes(&self) -> u64 {
        self.length_bytes
    }
}
