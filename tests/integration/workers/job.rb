# Jobs for the Sidekiq worker the integration tests start (`sidekiq -r ./job.rb`): each run appends one JSON
# line to $OUT_DIR/<class>.jsonl, so that a test sees that the job ran, with what, and how many times.
require "sidekiq"
require "json"

module Record
  def self.line(name, fields)
    File.open(File.join(ENV.fetch("OUT_DIR"), "#{name}.jsonl"), "a") { |f| f.puts(JSON.dump(fields)) }
  end
end

class ReportJob
  include Sidekiq::Worker

  def perform(*args)
    Record.line("ReportJob", {"jid" => jid, "args" => args, "started_at" => Time.now.to_f})
  end
end

# A stand-in for Rails' adapter class (Rails is not installed here): it receives the ActiveJob data as
# Rails' JobWrapper would, and records the class and arguments it would run.
module ActiveJob
  module QueueAdapters
    class SidekiqAdapter
      class JobWrapper
        include Sidekiq::Worker

        def perform(job_data)
          Record.line("ActiveJob", {"jid" => jid, "job_data" => job_data})
        end
      end
    end
  end
end
